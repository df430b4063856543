//! Building the example and hostile plugin components, and the two-tenant
//! dev server the plugin tests share (used by the `e2e` and `alone` test
//! binaries).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::OnceLock;

use allot_sdk::{Client, Scope, proto};

use crate::harness::*;

/// Builds the Rust example plugins and the hostile ones once per test run
/// (`plugins/build.sh --rust --hostile`); file name → path.
pub fn components() -> &'static HashMap<String, PathBuf> {
    static BUILT: OnceLock<HashMap<String, PathBuf>> = OnceLock::new();
    BUILT.get_or_init(|| build(&["--rust", "--hostile"], "is the wasm32-wasip2 target installed?"))
}

/// Builds the Python example plugins once per test run
/// (`plugins/build.sh --python`, componentize-py from scripts/setup.sh);
/// file name → path.
pub fn python_components() -> &'static HashMap<String, PathBuf> {
    static BUILT: OnceLock<HashMap<String, PathBuf>> = OnceLock::new();
    BUILT.get_or_init(|| build(&["--python"], "is componentize-py installed?"))
}

/// Runs `plugins/build.sh` with `flags`; the components it printed, by file
/// name.
fn build(flags: &[&str], hint: &str) -> HashMap<String, PathBuf> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../plugins/build.sh");
    let out = std::process::Command::new(&script)
        .args(flags)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "{} {} failed ({hint} run scripts/setup.sh):\n{}",
        script.display(),
        flags.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(PathBuf::from)
        .map(|p| (p.file_stem().expect("a file").to_string_lossy().into_owned(), p))
        .collect()
}

pub fn wasm(name: &str) -> Vec<u8> {
    std::fs::read(
        components()
            .get(name)
            .unwrap_or_else(|| panic!("{name} not built")),
    )
    .unwrap()
}

/// A dev server with a second tenant, `team-b`, and a client for it.
pub async fn two_tenants(dir: &std::path::Path) -> (DevServer, Client, Client) {
    two_tenants_with(dir, &[]).await
}

/// [`two_tenants`] with extra `allot server` arguments.
pub async fn two_tenants_with(dir: &std::path::Path, extra: &[&str]) -> (DevServer, Client, Client) {
    let server = DevServer::start_with(dir, extra).await;
    let admin = server.admin().await;
    admin.admin().create_tenant("team-b").await.unwrap();
    let issued = admin
        .admin()
        .issue_token(proto::Role::Tenant, Some("team-b"), "tests")
        .await
        .unwrap();
    let b = Client::connect(server.addr.clone(), &issued.token).await.unwrap();
    let a = server.client().await; // tenant "default"
    (server, a, b)
}

/// Uploads the built component `component` as the caller's own plugin
/// `name` and binds it for the caller at its world.
pub async fn add_and_bind_own(client: &Client, name: &str, component: &str) {
    client
        .plugins()
        .add(name, wasm(component), &Scope::Own)
        .await
        .unwrap();
    client.plugins().bind(name, None, &Scope::Own).await.unwrap();
}
