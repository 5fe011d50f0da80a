//! A network namespace for partition tests: a process started in it reaches the host only
//! through a veth pair, on addresses of its own (`10.77.<n>.0/24`, nothing routed beyond), and
//! [`Namespace::cut`] drops its traffic to one of the host's addresses until [`Namespace::heal`].
//! Needs root (`ip netns`, iproute2); removed, with its link, when dropped.

use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};

pub struct Namespace {
    pub name: String,
    /// The namespace's own address.
    pub inside: String,
    /// Two addresses of the host on the link, for two services the namespace can be cut from
    /// one at a time.
    pub host: [String; 2],
}

/// Runs `ip` with `args` (bounded), failing with its stderr.
fn ip(args: &[&str]) -> anyhow::Result<()> {
    let mut command = Command::new("ip");
    command.args(args);
    let output = crate::bounded::output(&mut command, Duration::from_secs(20))
        .context("`ip` (Debian's iproute2) is needed for partition tests")?;
    if !output.status.success() {
        bail!(
            "ip {}: {} (partition tests need root)",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

impl Namespace {
    pub fn create() -> anyhow::Result<Self> {
        remove_orphans();
        let id = std::process::id();
        let net = id % 250 + 1;
        let name = format!("ragway{id}");
        let (outer, inner) = (format!("rwh{id}"), format!("rwn{id}"));
        let namespace = Self {
            name: name.clone(),
            inside: format!("10.77.{net}.2"),
            host: [format!("10.77.{net}.1"), format!("10.77.{net}.3")],
        };
        ip(&["netns", "add", &name])?;
        // From here on, dropping `namespace` removes what was made.
        ip(&[
            "link", "add", &outer, "type", "veth", "peer", "name", &inner, "netns", &name,
        ])?;
        for host in &namespace.host {
            ip(&["addr", "add", &format!("{host}/24"), "dev", &outer])?;
        }
        ip(&["link", "set", &outer, "up"])?;
        let inside = format!("{}/24", namespace.inside);
        namespace.exec(&["ip", "addr", "add", &inside, "dev", &inner])?;
        namespace.exec(&["ip", "link", "set", &inner, "up"])?;
        namespace.exec(&["ip", "link", "set", "lo", "up"])?;
        Ok(namespace)
    }

    fn exec(&self, command: &[&str]) -> anyhow::Result<()> {
        let mut args = vec!["netns", "exec", &self.name];
        args.extend_from_slice(command);
        ip(&args)
    }

    /// Drops every packet the namespace sends to `host` (its connections there hang, new ones
    /// fail): a cut link.
    pub fn cut(&self, host: &str) -> anyhow::Result<()> {
        self.exec(&["ip", "route", "add", "blackhole", &format!("{host}/32")])
    }

    pub fn heal(&self, host: &str) -> anyhow::Result<()> {
        self.exec(&["ip", "route", "del", "blackhole", &format!("{host}/32")])
    }
}

/// Removes the namespaces of test processes that died without dropping theirs (killed past their
/// bound): their addresses would otherwise stay on the host's side of their link.
fn remove_orphans() {
    let mut list = Command::new("ip");
    list.args(["netns", "list"]);
    let Ok(output) = crate::bounded::output(&mut list, Duration::from_secs(20)) else {
        return;
    };
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(pid) = name.strip_prefix("ragway").and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "del", name]);
            let _ = ip(&["link", "del", &format!("rwh{pid}")]);
        }
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        // Deleting the namespace deletes the veth pair with it.
        let _ = ip(&["netns", "del", &self.name]);
        let _ = ip(&["link", "del", &format!("rwh{}", std::process::id())]);
    }
}
