//! Pure text generation for a test cluster: server settings, client authentication rules and
//! SQL quoting. Kept free of I/O so it can be checked without starting PostgreSQL.

use std::path::Path;

use super::PgOptions;

/// `pg_hba.conf` for a test cluster. The superuser `postgres` gets in without a password, so the
/// harness can always administer the cluster; every other role must authenticate. The `md5`
/// method is used for them because PostgreSQL then runs SCRAM for roles whose stored verifier
/// is SCRAM and md5 for roles with an md5 hash, so roles of both kinds work side by side.
pub(crate) const HBA: &str = "\
# TYPE  DATABASE  USER      ADDRESS        METHOD
local   all       postgres                 trust
local   all       all                      md5
host    all       postgres  127.0.0.1/32   trust
host    all       all       127.0.0.1/32   md5
";

/// The `pg_hba.conf` of a cluster: the test's own or [`HBA`], and for a cluster in a network
/// namespace the same rules for the namespace's subnet, where its clients come from.
pub(crate) fn hba(opts: &PgOptions) -> String {
    let mut hba = opts.hba.clone().unwrap_or_else(|| HBA.to_owned());
    if let Some(netns) = &opts.netns {
        hba.push_str(&format!(
            "host    all       postgres  {subnet}  trust\n\
             host    all       all       {subnet}  md5\n",
            subnet = netns.subnet
        ));
    }
    hba
}

/// The server certificate, key and client CA files in the data directory, when TLS is on.
pub(crate) const SSL_CERT_FILE: &str = "server.crt";
pub(crate) const SSL_KEY_FILE: &str = "server.key";
pub(crate) const SSL_CA_FILE: &str = "root.crt";

/// Settings appended to the `postgresql.conf` written by initdb; later lines override earlier
/// ones, so `opts.extra_conf` comes last and can override anything here. The port is not set
/// here: it is passed on the command line so a retry with another port needs no rewrite.
pub(crate) fn settings(opts: &PgOptions, socket_dir: &Path) -> String {
    let listen = opts
        .netns
        .as_ref()
        .map_or_else(|| "127.0.0.1".to_owned(), |n| n.address.to_string());
    let mut conf = format!(
        "\n# Test cluster settings\n\
         listen_addresses = '{listen}'\n\
         unix_socket_directories = {socket_dir}\n\
         max_connections = {max_connections}\n\
         password_encryption = {password_encryption}\n\
         fsync = off\n\
         synchronous_commit = off\n\
         full_page_writes = off\n\
         logging_collector = off\n\
         log_connections = on\n\
         log_disconnections = on\n\
         log_line_prefix = '%m [%p] %q%u@%d '\n",
        socket_dir = quote_literal(&socket_dir.to_string_lossy()),
        max_connections = opts.max_connections,
        password_encryption = quote_literal(opts.password_encryption),
    );
    if let Some(tls) = &opts.tls {
        conf.push_str(&format!(
            "ssl = on\nssl_cert_file = '{SSL_CERT_FILE}'\nssl_key_file = '{SSL_KEY_FILE}'\n"
        ));
        if tls.ca_pem.is_some() {
            conf.push_str(&format!("ssl_ca_file = '{SSL_CA_FILE}'\n"));
        }
    }
    for line in &opts.extra_conf {
        conf.push_str(line);
        conf.push('\n');
    }
    conf
}

/// Quotes `name` as an SQL identifier, so role and database names from tests can contain any
/// character without breaking (or injecting into) the generated SQL.
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes `value` as a standard-conforming SQL string literal (also valid in postgresql.conf).
pub(crate) fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_contain_the_options_and_extra_lines_last() {
        let opts = PgOptions {
            max_connections: 7,
            password_encryption: "md5",
            extra_conf: vec!["work_mem = '7MB'".into(), "max_connections = 9".into()],
            ..PgOptions::default()
        };
        let conf = settings(&opts, Path::new("/tmp/x'y/socket"));
        assert!(conf.contains("max_connections = 7\n"));
        assert!(conf.contains("password_encryption = 'md5'\n"));
        assert!(conf.contains("unix_socket_directories = '/tmp/x''y/socket'\n"));
        assert!(conf.contains("listen_addresses = '127.0.0.1'\n"));
        assert!(conf.contains("log_connections = on\n"));
        assert!(conf.contains("fsync = off\n"));
        assert!(conf.ends_with("work_mem = '7MB'\nmax_connections = 9\n"));
        assert!(
            !conf.contains("\nport"),
            "the port belongs on the command line"
        );
    }

    #[test]
    fn default_options() {
        let opts = PgOptions::default();
        assert_eq!(opts.max_connections, 100);
        assert_eq!(opts.password_encryption, "scram-sha-256");
        assert!(opts.extra_conf.is_empty());
        assert!(opts.tls.is_none() && opts.hba.is_none());
    }

    #[test]
    fn hba_trusts_only_the_superuser() {
        for line in HBA.lines().filter(|l| !l.starts_with('#')) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let method = fields[fields.len() - 1];
            if fields[2] == "postgres" {
                assert_eq!(method, "trust", "{line}");
            } else {
                assert_eq!(method, "md5", "{line}");
            }
        }
    }

    #[test]
    fn a_cluster_in_a_namespace_listens_there_and_lets_its_subnet_in() {
        let opts = PgOptions {
            netns: Some(crate::netns::InNetns {
                name: "ns".into(),
                address: std::net::Ipv4Addr::new(10, 201, 0, 2),
                subnet: "10.201.0.0/30".into(),
            }),
            ..PgOptions::default()
        };
        let conf = settings(&opts, Path::new("/tmp/s"));
        assert!(conf.contains("listen_addresses = '10.201.0.2'\n"), "{conf}");
        let hba = hba(&opts);
        assert!(hba.starts_with(HBA));
        assert!(hba.contains("host    all       postgres  10.201.0.0/30  trust\n"));
        assert!(hba.ends_with("host    all       all       10.201.0.0/30  md5\n"));
        assert_eq!(super::hba(&PgOptions::default()), HBA);
    }

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("app"), "\"app\"");
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal(""), "''");
    }
}
