//! The ConnectionPool CustomResourceDefinition, as clusters get it.
//!
//! `crds/connectionpools.weir.dev.yaml` holds [`crd_yaml`]'s output; a test fails when the
//! two differ, so the file is never edited by hand (regenerate it with
//! `weir-operator crd > crds/connectionpools.weir.dev.yaml`).

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};
use kube::CustomResourceExt;

use crate::api::{rules, ConnectionPool};
use crate::yaml;

/// The CRD: the derived one, plus the rules on the whole object that the derive cannot
/// express (the name must also be a valid Service name), with descriptions reflowed so
/// that `kubectl explain` wraps them itself.
pub fn crd() -> CustomResourceDefinition {
    let mut crd = ConnectionPool::crd();
    for version in &mut crd.spec.versions {
        if let Some(schema) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        {
            let rules = schema.x_kubernetes_validations.get_or_insert_with(Vec::new);
            rules.extend(rules::root_rules());
            reflow_descriptions(schema);
        }
    }
    // Objects written by this operator's tooling carry this label.
    let labels = crd.metadata.labels.get_or_insert_with(Default::default);
    labels.insert("app.kubernetes.io/part-of".into(), "weir".into());
    crd
}

/// Joins the lines of every description into paragraphs: doc comments break lines at the
/// source's width, which `kubectl explain` would otherwise keep.
fn reflow_descriptions(schema: &mut JSONSchemaProps) {
    if let Some(text) = schema.description.as_mut() {
        *text = reflow(text);
    }
    let children = schema
        .properties
        .iter_mut()
        .flat_map(|p| p.values_mut())
        .chain(schema.items.iter_mut().filter_map(|items| match items {
            JSONSchemaPropsOrArray::Schema(s) => Some(s.as_mut()),
            JSONSchemaPropsOrArray::Schemas(_) => None,
        }))
        .chain(
            schema
                .additional_properties
                .iter_mut()
                .filter_map(|a| match a {
                    JSONSchemaPropsOrBool::Schema(s) => Some(s.as_mut()),
                    JSONSchemaPropsOrBool::Bool(_) => None,
                }),
        );
    for child in children {
        reflow_descriptions(child);
    }
}

/// One line per paragraph; paragraphs stay separated by a blank line.
fn reflow(text: &str) -> String {
    text.split("\n\n")
        .map(|p| p.split('\n').map(str::trim).collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join("\n\n")
}

/// The CRD as a YAML document.
pub fn crd_yaml() -> Result<String, yaml::Error> {
    yaml::to_string(&crd())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::rules::Rule;

    fn pairs<T: ?Sized>(rules: Vec<Rule<T>>) -> Vec<(String, String)> {
        rules.into_iter().map(|r| (r.cel, r.message)).collect()
    }

    /// Every Rust twin has its CEL rule in the CRD, with the same message.
    #[test]
    fn every_rule_is_in_the_crd() {
        let json = serde_json::to_string(&crd()).expect("json");
        let all = [
            pairs(rules::spec_rules()),
            pairs(rules::database_rules()),
            pairs(rules::credentials_rules()),
            pairs(rules::password_rules()),
            pairs(rules::user_rules()),
            pairs(rules::users_rules()),
            pairs(rules::limits_rules()),
            pairs(rules::rollout_rules()),
            pairs(rules::autoscaling_rules()),
            pairs(rules::parameters_rules()),
            pairs(rules::pod_labels_rules()),
            pairs(rules::pod_annotations_rules()),
            pairs(rules::client_tls_rules()),
            pairs(rules::server_tls_rules()),
            pairs(rules::ca_source_rules()),
            pairs(rules::key_selector_rules()),
        ];
        for (cel, message) in all.iter().flatten() {
            let entry = serde_json::json!({ "message": message, "rule": cel }).to_string();
            let entry = entry.trim_start_matches('{').trim_end_matches('}');
            assert!(json.contains(entry), "missing from the CRD: {cel}");
        }
    }

    #[test]
    fn descriptions_are_reflowed() {
        assert_eq!(reflow("a\nb c\n\nd\n e"), "a b c\n\nd e");
        let yaml = crd_yaml().expect("yaml");
        assert!(yaml.contains("kind: CustomResourceDefinition"));
        assert!(yaml.contains("shortNames:\n    - cpool"));
    }
}
