//! Server addresses as users type them, turned into what the transport dials.
//!
//! Accepted forms (SPEC §4: addresses are URLs):
//! - `http://host:port` — plaintext HTTP/2 over TCP;
//! - `host:port` — the same (what etcdctl users type);
//! - `https://host:port` — TLS, verified against `--ca` or the system's roots;
//! - `unix:///absolute/path` or `unix:relative/path` — plaintext over a Unix socket;
//! - `unixs:///absolute/path` or `unixs:relative/path` — TLS over a Unix socket; the server's
//!   certificate is verified for the name `localhost` unless another server name is given.

use crate::ClientError;

/// Where to dial, with the transport security it implies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Plaintext TCP; `uri` is `http://host:port`.
    Http { uri: String },
    /// TLS over TCP; `uri` is `https://host:port`.
    Https { uri: String },
    /// Plaintext over a Unix socket; `uri` is `unix://path` as tonic expects it.
    Unix { uri: String },
    /// TLS over the Unix socket `path`.
    UnixTls { path: String },
}

/// The host name a `unixs://` server's certificate is verified for by default.
pub const UNIX_TLS_DEFAULT_SERVER_NAME: &str = "localhost";

impl Target {
    /// The URI handed to the transport. For TLS over a Unix socket, whose socket is dialled
    /// by our own connector, it is `https://localhost`: the scheme turns TLS on and the host
    /// is the default server name.
    pub fn uri(&self) -> &str {
        match self {
            Target::Http { uri } | Target::Https { uri } | Target::Unix { uri } => uri,
            Target::UnixTls { .. } => "https://localhost",
        }
    }

    /// Whether the connection uses TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self, Target::Https { .. } | Target::UnixTls { .. })
    }
}

/// Parses a user-given address; see the module documentation for the accepted forms.
pub fn parse_address(address: &str) -> Result<Target, ClientError> {
    let invalid = |reason: &str| ClientError::InvalidAddress {
        address: address.to_owned(),
        reason: reason.to_owned(),
    };
    let trimmed = address.trim();
    if trimmed.is_empty() {
        return Err(invalid("the address is empty"));
    }
    if let Some(rest) = trimmed.strip_prefix("unixs:") {
        let path = rest.strip_prefix("//").unwrap_or(rest);
        if path.is_empty() {
            return Err(invalid(
                "the Unix socket path is empty (use unixs:///path/to/socket)",
            ));
        }
        return Ok(Target::UnixTls {
            path: path.to_owned(),
        });
    }
    if let Some(rest) = trimmed.strip_prefix("unix:") {
        let path = rest.strip_prefix("//").unwrap_or(rest);
        if path.is_empty() {
            return Err(invalid(
                "the Unix socket path is empty (use unix:///path/to/socket)",
            ));
        }
        return Ok(Target::Unix {
            uri: format!("unix://{path}"),
        });
    }
    let (tls, authority) = if let Some(rest) = trimmed.strip_prefix("https://") {
        (true, rest)
    } else if let Some(rest) = trimmed.strip_prefix("http://") {
        (false, rest)
    } else if trimmed.contains("://") {
        return Err(invalid("the scheme must be http://, https:// or unix://"));
    } else {
        (false, trimmed)
    };
    let authority = authority.strip_suffix('/').unwrap_or(authority);
    if authority.is_empty() {
        return Err(invalid("the host is missing"));
    }
    if authority.contains('/') {
        return Err(invalid("an address has no path (use scheme://host:port)"));
    }
    let uri = format!("{}://{authority}", if tls { "https" } else { "http" });
    let parsed: tonic::codegen::http::Uri = uri
        .parse()
        .map_err(|error| invalid(&format!("not a valid host:port ({error})")))?;
    if parsed.host().is_none_or(str::is_empty) {
        return Err(invalid("the host is missing"));
    }
    // `Uri` accepts any text after the colon; only a u16 is a port. (Skip an IPv6 literal.)
    let after_host = &authority[authority.rfind(']').unwrap_or(0)..];
    if after_host.contains(':') && parsed.port_u16().is_none() {
        return Err(invalid("the port must be a number from 0 to 65535"));
    }
    Ok(if tls {
        Target::Https { uri }
    } else {
        Target::Http { uri }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uri(address: &str) -> String {
        parse_address(address).expect(address).uri().to_owned()
    }

    #[test]
    fn plaintext_forms() {
        assert_eq!(uri("http://127.0.0.1:8443"), "http://127.0.0.1:8443");
        assert_eq!(uri("127.0.0.1:8443"), "http://127.0.0.1:8443");
        assert_eq!(uri("localhost:1"), "http://localhost:1");
        assert_eq!(uri(" http://[::1]:8443/ "), "http://[::1]:8443");
        assert!(!parse_address("localhost:1").unwrap().is_tls());
    }

    #[test]
    fn tls_form() {
        let target = parse_address("https://armada.example.com:8443").unwrap();
        assert!(target.is_tls());
        assert_eq!(target.uri(), "https://armada.example.com:8443");
    }

    #[test]
    fn unix_forms() {
        assert_eq!(uri("unix:///run/armada.sock"), "unix:///run/armada.sock");
        assert_eq!(uri("unix:armada.sock"), "unix://armada.sock");
        assert_eq!(
            parse_address("unix:///tmp/a").unwrap(),
            Target::Unix {
                uri: "unix:///tmp/a".into()
            }
        );
        let tls = parse_address("unixs:///run/armada.sock").unwrap();
        assert_eq!(
            tls,
            Target::UnixTls {
                path: "/run/armada.sock".into()
            }
        );
        assert!(tls.is_tls());
        assert_eq!(tls.uri(), "https://localhost");
    }

    #[test]
    fn rejected_forms() {
        for address in [
            "",
            "   ",
            "ftp://host:1",
            "http://",
            "http://host:1/path",
            "unix://",
            "unixs://",
            "http://host:notaport",
            "host:70000",
            "http://[::1]:x",
        ] {
            let error = parse_address(address).expect_err(address);
            assert!(
                matches!(error, ClientError::InvalidAddress { .. }),
                "{address}: {error}"
            );
        }
    }
}
