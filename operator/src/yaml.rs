//! YAML output: single documents and `---`-separated streams, as `kubectl apply -f` reads.

use serde::Serialize;

/// A value that could not be written as YAML.
pub type Error = serde_saphyr::SerializeError;

/// Serializes one document. Multi-line strings (pgbouncer.ini) become literal blocks;
/// long single-line ones (base64 data, descriptions) stay on one line rather than being
/// folded, as kubectl prints them.
pub fn to_string<T: Serialize>(value: &T) -> Result<String, Error> {
    let mut options = serde_saphyr::SerializerOptions::default();
    options.folded_wrap_chars = usize::MAX;
    serde_saphyr::to_string_with_options(value, options)
}

/// Serializes documents of any types into one stream, each introduced by `---`.
pub fn stream(documents: &[&dyn erased::Document]) -> Result<String, Error> {
    let mut out = String::new();
    for document in documents {
        out.push_str("---\n");
        out.push_str(&document.to_yaml()?);
    }
    Ok(out)
}

/// Object-safe serialization, so that one stream can mix Deployments, Secrets and the rest.
pub mod erased {
    use super::Error;

    /// Anything that can be written as one YAML document.
    pub trait Document {
        /// The document's YAML text.
        fn to_yaml(&self) -> Result<String, Error>;
    }

    impl<T: serde::Serialize> Document for T {
        fn to_yaml(&self) -> Result<String, Error> {
            super::to_string(self)
        }
    }
}
