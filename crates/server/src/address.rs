//! Listen addresses are URLs: `http://host:port` (plaintext TCP), `https://host:port` (TLS),
//! `unix:///path` and `unixs:///path` (Unix sockets, plaintext or TLS).

use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenAddress {
    Tcp { address: String, tls: bool },
    Unix { path: PathBuf, tls: bool },
}

impl ListenAddress {
    pub fn parse(url: &str) -> Result<ListenAddress, String> {
        let (scheme, rest) = url.split_once("://").ok_or_else(|| {
            format!("`{url}` has no scheme (use http://, https://, unix:// or unixs://)")
        })?;
        match scheme {
            "http" | "https" => {
                let address = rest.trim_end_matches('/');
                if address
                    .rsplit_once(':')
                    .is_none_or(|(_, port)| port.parse::<u16>().is_err())
                {
                    return Err(format!("`{url}` needs host:port"));
                }
                Ok(ListenAddress::Tcp {
                    address: address.to_string(),
                    tls: scheme == "https",
                })
            }
            "unix" | "unixs" if !rest.is_empty() => Ok(ListenAddress::Unix {
                path: PathBuf::from(rest),
                tls: scheme == "unixs",
            }),
            _ => Err(format!(
                "`{url}`: unsupported scheme `{scheme}` (use http, https, unix or unixs)"
            )),
        }
    }

    /// Resolves a TCP address to a socket address.
    pub async fn socket_address(&self) -> std::io::Result<SocketAddr> {
        match self {
            ListenAddress::Tcp { address, .. } => tokio::net::lookup_host(address)
                .await?
                .next()
                .ok_or_else(|| std::io::Error::other(format!("{address} resolves to nothing"))),
            ListenAddress::Unix { path, .. } => Err(std::io::Error::other(format!(
                "{} is a Unix socket, not a TCP address",
                path.display()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_scheme_and_rejects_the_rest() {
        assert_eq!(
            ListenAddress::parse("http://127.0.0.1:8443"),
            Ok(ListenAddress::Tcp {
                address: "127.0.0.1:8443".into(),
                tls: false
            })
        );
        assert!(matches!(
            ListenAddress::parse("https://h:1"),
            Ok(ListenAddress::Tcp { tls: true, .. })
        ));
        assert!(matches!(
            ListenAddress::parse("unix:///tmp/a.sock"),
            Ok(ListenAddress::Unix { tls: false, .. })
        ));
        assert!(matches!(
            ListenAddress::parse("unixs:///tmp/a.sock"),
            Ok(ListenAddress::Unix { tls: true, .. })
        ));
        assert!(ListenAddress::parse("127.0.0.1:8443").is_err());
        assert!(ListenAddress::parse("ftp://h:1").is_err());
        assert!(ListenAddress::parse("http://h").is_err());
    }
}
