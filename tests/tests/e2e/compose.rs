//! `docker/compose.yaml` and `docker/compose.ha.yaml` and their files, checked without a container
//! engine (none runs here): each stack names every service it needs and wires them together, every
//! file it mounts exists, nginx balances over both replicas, Prometheus scrapes both, the HA stack
//! has no single Qdrant or Redis process, and the Grafana dashboard parses and queries only metrics
//! ragway exports. YAML is read by PyYAML from the test venv.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn docker() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docker")
}

/// A YAML file as JSON, through PyYAML.
fn yaml(path: &Path) -> anyhow::Result<Value> {
    let python = std::env::var("RAGWAY_PYTHON").unwrap_or_else(|_| "python3".into());
    let mut command = Command::new(&python);
    command
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
        ])
        .arg(path);
    let output = ragway_e2e::bounded::output(&mut command, std::time::Duration::from_secs(60))?;
    anyhow::ensure!(
        output.status.success(),
        "cannot read {} with PyYAML ({python}; run scripts/test.sh, or pip install pyyaml and set RAGWAY_PYTHON): {}",
        path.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(serde_json::from_slice(&output.stdout)?)
}

/// The names of a compose file's services.
fn service_names(services: &Value) -> BTreeSet<&str> {
    services
        .as_object()
        .map(|s| s.keys().map(String::as_str).collect())
        .unwrap_or_default()
}

/// Every file a service mounts from the repository exists, and every volume it mounts is
/// declared.
fn mounts_exist(compose: &Value) {
    for (name, service) in compose["services"].as_object().into_iter().flatten() {
        for volume in service["volumes"].as_array().into_iter().flatten() {
            let source = volume
                .as_str()
                .and_then(|v| v.split(':').next())
                .unwrap_or_default();
            if source.starts_with("./") {
                assert!(
                    docker().join(source).exists(),
                    "{name} mounts {source}, which is missing"
                );
            } else if !source.starts_with('/') {
                assert!(
                    compose["volumes"].get(source).is_some(),
                    "{name} mounts the volume {source}, which the file does not declare"
                );
            }
        }
    }
}

const GATEWAYS: [&str; 2] = ["ragway-1", "ragway-2"];

#[test]
fn the_compose_stack_names_and_wires_every_service() -> anyhow::Result<()> {
    let compose = yaml(&docker().join("compose.yaml"))?;
    let services = &compose["services"];
    let names = service_names(services);
    let expected = [
        "nginx",
        "ragway-1",
        "ragway-2",
        "qdrant",
        "redis",
        "llm",
        "prometheus",
        "grafana",
    ];
    assert_eq!(names, expected.into_iter().collect(), "services");
    for gateway in GATEWAYS {
        let env = &services[gateway]["environment"];
        assert_eq!(env["RAGWAY__STORE__KIND"], "qdrant", "{gateway}");
        assert_eq!(env["RAGWAY__STORE__URL"], "http://qdrant:6334", "{gateway}");
        assert_eq!(
            env["RAGWAY__CACHE__REDIS__URL"], "redis://redis:6379/0",
            "{gateway}"
        );
        assert!(
            services[gateway]["healthcheck"]["test"]
                .to_string()
                .contains("/readyz"),
            "{gateway}"
        );
        for dependency in ["qdrant", "redis", "llm"] {
            assert!(
                services[gateway]["depends_on"].get(dependency).is_some(),
                "{gateway} needs {dependency}"
            );
        }
    }
    mounts_exist(&compose);
    for (name, service) in services.as_object().into_iter().flatten() {
        if let Some(file) = service["build"]["dockerfile"].as_str() {
            assert!(
                docker().join("..").join(file).is_file(),
                "{name} builds from {file}, which is missing"
            );
        }
    }
    // The gateways' LLM config: llama.cpp's server first, the local model as the fallback.
    let config = std::fs::read_to_string(docker().join("ragway.toml"))?;
    let llm_server = config.find("base_url = \"http://llm:8000/v1\"");
    let local = config.find("kind = \"local\"");
    assert!(
        matches!((llm_server, local), (Some(a), Some(b)) if a < b),
        "{config}"
    );

    let nginx = std::fs::read_to_string(docker().join("nginx.conf"))?;
    assert!(nginx.contains("least_conn;"), "{nginx}");
    for gateway in GATEWAYS {
        assert!(
            nginx.contains(&format!("server {gateway}:8080")),
            "nginx balances over {gateway}"
        );
    }
    let prometheus = yaml(&docker().join("prometheus.yml"))?;
    let targets = &prometheus["scrape_configs"][0]["static_configs"][0]["targets"];
    assert_eq!(targets, &serde_json::json!(["ragway-1:8080", "ragway-2:8080"]));
    let provisioning = yaml(&docker().join("grafana/provisioning/datasources/prometheus.yaml"))?;
    assert_eq!(provisioning["datasources"][0]["url"], "http://prometheus:9090");
    Ok(())
}

#[test]
fn the_ha_stack_has_no_single_qdrant_or_redis() -> anyhow::Result<()> {
    let compose = yaml(&docker().join("compose.ha.yaml"))?;
    let services = &compose["services"];
    let names = service_names(services);
    let nodes = ["qdrant-1", "qdrant-2", "qdrant-3"];
    let sentinels = ["sentinel-1", "sentinel-2", "sentinel-3"];
    let mut expected: BTreeSet<&str> = [
        "nginx",
        "ragway-1",
        "ragway-2",
        "redis-1",
        "redis-2",
        "llm",
        "prometheus",
        "grafana",
    ]
    .into_iter()
    .collect();
    expected.extend(nodes);
    expected.extend(sentinels);
    assert_eq!(names, expected, "services");
    let as_list =
        |v: &Value| -> anyhow::Result<Vec<String>> { Ok(serde_json::from_str(v.as_str().unwrap_or("[]"))?) };
    for gateway in GATEWAYS {
        let env = &services[gateway]["environment"];
        assert_eq!(env["RAGWAY__STORE__KIND"], "qdrant", "{gateway}");
        let urls = as_list(&env["RAGWAY__STORE__URLS"])?;
        assert_eq!(
            urls,
            nodes.map(|n| format!("http://{n}:6334")),
            "{gateway}: every Qdrant node"
        );
        let watched = as_list(&env["RAGWAY__CACHE__REDIS__SENTINELS"])?;
        assert_eq!(
            watched,
            sentinels.map(|s| format!("{s}:26379")),
            "{gateway}: every sentinel"
        );
        assert!(
            env.get("RAGWAY__CACHE__REDIS__URL").is_none(),
            "{gateway}: no single Redis address"
        );
        let master = env["RAGWAY__CACHE__REDIS__MASTER"].as_str().unwrap_or_default();
        for sentinel in sentinels {
            let script = services[sentinel]["command"].to_string();
            assert!(
                script.contains(&format!("sentinel monitor {master} redis-1 6379 2")),
                "{sentinel} watches the primary under {master} with quorum 2: {script}"
            );
        }
        for node in nodes {
            assert!(
                services[gateway]["depends_on"].get(node).is_some(),
                "{gateway} needs {node}"
            );
        }
    }
    // One cluster: every node in distributed mode, the others joining the first.
    for (i, node) in nodes.iter().enumerate() {
        let service = &services[*node];
        assert_eq!(
            service["environment"]["QDRANT__CLUSTER__ENABLED"], "true",
            "{node}"
        );
        let command = service["command"].to_string();
        assert!(
            command.contains(&format!("http://{node}:6335")),
            "{node}: {command}"
        );
        assert_eq!(
            command.contains("--bootstrap\",\"http://qdrant-1:6335"),
            i > 0,
            "{node}: {command}"
        );
        assert!(
            service["volumes"][0]
                .as_str()
                .is_some_and(|v| v.starts_with(&format!("{node}:"))),
            "{node} keeps its own storage"
        );
    }
    // Both Redis servers fsync every write; the second replicates the first.
    for redis in ["redis-1", "redis-2"] {
        let command = services[redis]["command"].to_string();
        assert!(
            command.contains("\"--appendfsync\",\"always\""),
            "{redis}: {command}"
        );
    }
    assert!(services["redis-2"]["command"]
        .to_string()
        .contains("\"--replicaof\",\"redis-1\""));
    mounts_exist(&compose);
    Ok(())
}

/// Every `ragway_*` metric name the code declares (`counter!`, `gauge!`, `histogram!`).
fn exported_metrics() -> anyhow::Result<BTreeSet<String>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut names = BTreeSet::new();
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            let skip = path
                .file_name()
                .is_some_and(|n| n == "target" || n == ".git" || n == "tests");
            if path.is_dir() && !skip {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let source = std::fs::read_to_string(&path)?;
                for macro_call in ["counter!(\"", "gauge!(\"", "histogram!(\""] {
                    for piece in source.split(macro_call).skip(1) {
                        names.extend(piece.split('"').next().map(str::to_string));
                    }
                }
            }
        }
    }
    Ok(names)
}

#[test]
fn the_dashboard_shows_what_the_issue_asks_from_metrics_ragway_exports() -> anyhow::Result<()> {
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(docker().join("grafana/ragway.json"))?)?;
    let exported = exported_metrics()?;
    assert!(exported.contains("ragway_requests_total"), "{exported:?}");
    let mut used = BTreeSet::new();
    let mut titles = Vec::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        titles.push(panel["title"].as_str().unwrap_or_default().to_lowercase());
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap_or_default();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("ragway_") {
                    let name = word.strip_suffix("_bucket").unwrap_or(word);
                    used.insert(name.to_string());
                }
            }
        }
    }
    let unknown: Vec<_> = used.difference(&exported).collect();
    assert!(
        unknown.is_empty(),
        "the dashboard queries metrics ragway does not export: {unknown:?}"
    );
    for wanted in [
        "requests per second",
        "p50 / p99",
        "mode",
        "breaker",
        "cache hit ratio",
        "queue",
        "tokens by tenant",
        "quota rejections",
        "qdrant nodes up",
        "redis failovers",
    ] {
        assert!(
            titles.iter().any(|t| t.contains(wanted)),
            "no panel for {wanted}: {titles:?}"
        );
    }
    Ok(())
}
