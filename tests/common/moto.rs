//! A second S3 server for interoperability tests: moto 4
//! (`moto[server]==4.2.14`, which predates conditional writes; moto 5
//! honours them), installed into its own venv by scripts/setup.sh and
//! started by the test on 127.0.0.1. It keeps what each PUT asked for
//! (server-side encryption, storage class) and answers it on HEAD.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use super::{S3, Server, free_port};

/// The Python of the venv scripts/setup.sh installs old moto into
/// (`MAILSAFE_TEST_MOTO_PYTHON` overrides it).
fn moto_python() -> PathBuf {
    let p = std::env::var_os("MAILSAFE_TEST_MOTO_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/mailsafe-moto4/bin/python"));
    assert!(
        p.exists(),
        "{} missing: run scripts/setup.sh (it installs moto[server]==4.2.14 there)",
        p.display()
    );
    p
}

/// A moto S3 server on 127.0.0.1, stopped on drop.
pub struct Moto {
    child: Child,
    /// Its endpoint and (any) keys.
    pub server: Server,
}

impl Moto {
    /// Starts the server; [`Moto::bucket`] waits for it to answer.
    pub fn start() -> Moto {
        let port = free_port();
        let child = Command::new(moto_python())
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto");
        let server = Server {
            endpoint: format!("http://127.0.0.1:{port}"),
            access_key: "moto-test".into(),
            secret_key: "moto-test-secret".into(),
        };
        Moto { child, server }
    }

    /// A new bucket (waits, through create_bucket's retries, for the
    /// server to answer).
    pub fn bucket(&self, name: &str) -> S3 {
        self.server.create_bucket(name);
        S3 {
            server: self.server.clone(),
            bucket: name.into(),
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
