//! The labels and names every reactor-fabric Docker resource carries (REQUIREMENTS §3).
//!
//! Labels, not names, are the source of truth: `down` and `list` find an instance's
//! containers, networks and volumes by [`LABEL_INSTANCE`], so whatever else is
//! started for an instance (agent containers, sidecars) must carry it too, with
//! the matching [`Component`]. [`labels`] builds the set.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

/// `io.reactor-fabric.instance=NAME` on every container, network and volume of an instance.
pub const LABEL_INSTANCE: &str = "io.reactor-fabric.instance";
/// `io.reactor-fabric.component=orchestrator|redis|agent|sidecar`.
pub const LABEL_COMPONENT: &str = "io.reactor-fabric.component";
/// On images built by this crate: the SHA-256 of the program they were built from.
pub const LABEL_BINARY_SHA256: &str = "io.reactor-fabric.binary-sha256";
/// On images built by this crate: the reactor-fabric version that built them.
pub const LABEL_VERSION: &str = "io.reactor-fabric.version";

/// On agent containers, sidecars and their volumes: which fabric server made them
/// (one id per server: its data dir, or its instance), so that server's next
/// start removes what a crash left behind, and nobody else's.
pub const LABEL_OWNER: &str = "io.reactor-fabric.owner";
/// On agent containers and sidecars: the agent's id (absent on warm-pool ones).
pub const LABEL_AGENT: &str = "io.reactor-fabric.agent";

/// Prefix of every Docker name this project creates.
pub const NAME_PREFIX: &str = "reactor-fabric";

/// What a resource is for within its instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Component {
    /// The `reactor-fabric serve` container: API, scheduler, dashboard.
    Orchestrator,
    /// The instance's Redis (its store).
    Redis,
    /// An agent running at isolation level `container`.
    Agent,
    /// A helper sharing an agent's network namespace (the inference proxy).
    Sidecar,
    /// A worker node (`reactor-fabric node`) holding the Docker socket for
    /// the instance's container agents (`start --nodes N`).
    Node,
}

impl Component {
    pub const ALL: [Component; 5] = [
        Component::Orchestrator,
        Component::Redis,
        Component::Agent,
        Component::Sidecar,
        Component::Node,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Component::Orchestrator => "orchestrator",
            Component::Redis => "redis",
            Component::Agent => "agent",
            Component::Sidecar => "sidecar",
            Component::Node => "node",
        }
    }
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Component {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Component::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| format!("unknown component {s:?}"))
    }
}

/// The two labels of a resource of `instance`.
pub fn labels(instance: &str, component: Component) -> HashMap<String, String> {
    HashMap::from([
        (LABEL_INSTANCE.to_owned(), instance.to_owned()),
        (LABEL_COMPONENT.to_owned(), component.as_str().to_owned()),
    ])
}

/// The label of an instance without a component (networks and volumes shared by all of it).
pub fn instance_label(instance: &str) -> HashMap<String, String> {
    HashMap::from([(LABEL_INSTANCE.to_owned(), instance.to_owned())])
}

/// A Docker list filter: resources labelled with `instance`, or with any instance when `None`.
pub fn instance_filter(instance: Option<&str>) -> HashMap<String, Vec<String>> {
    let value = match instance {
        Some(name) => format!("{LABEL_INSTANCE}={name}"),
        None => LABEL_INSTANCE.to_owned(),
    };
    HashMap::from([("label".to_owned(), vec![value])])
}

/// A Docker list filter: resources whose label `key` is `value`.
pub fn label_filter(key: &str, value: &str) -> HashMap<String, Vec<String>> {
    HashMap::from([("label".to_owned(), vec![format!("{key}={value}")])])
}

/// `reactor-fabric-NAME`: the instance's network.
pub fn network_name(instance: &str) -> String {
    format!("{NAME_PREFIX}-{instance}")
}

/// `reactor-fabric-NAME-COMPONENT`: the instance's orchestrator or Redis container.
pub fn container_name(instance: &str, component: Component) -> String {
    format!("{NAME_PREFIX}-{instance}-{component}")
}

/// `reactor-fabric-NAME-COMPONENT-data`: the volume holding a component's data.
pub fn volume_name(instance: &str, component: Component) -> String {
    format!("{NAME_PREFIX}-{instance}-{component}-data")
}

/// Checks an instance name: it becomes part of container, network and volume names,
/// so it follows Docker's rule for those, kept to 40 characters so every name fits.
pub fn validate_instance_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let Some(first) = chars.next() else {
        return Err("the instance name is empty".to_owned());
    };
    if name.len() > 40 {
        return Err(format!(
            "instance name {name:?} is longer than 40 characters"
        ));
    }
    let ok_first = first.is_ascii_alphanumeric();
    let ok_rest = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok_first && ok_rest {
        Ok(())
    } else {
        Err(format!(
            "instance name {name:?} is not valid: use letters, digits, '_', '.' and '-', starting with a letter or digit"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_spec() {
        assert_eq!(network_name("my-test"), "reactor-fabric-my-test");
        assert_eq!(
            container_name("my-test", Component::Orchestrator),
            "reactor-fabric-my-test-orchestrator"
        );
        assert_eq!(
            container_name("my-test", Component::Redis),
            "reactor-fabric-my-test-redis"
        );
        let l = labels("my-test", Component::Redis);
        assert_eq!(l[LABEL_INSTANCE], "my-test");
        assert_eq!(l[LABEL_COMPONENT], "redis");
        assert_eq!(
            instance_filter(Some("a"))["label"],
            vec!["io.reactor-fabric.instance=a".to_owned()]
        );
    }

    #[test]
    fn instance_names_are_checked() {
        assert!(validate_instance_name("my-test.1_a").is_ok());
        assert!(validate_instance_name("").is_err());
        assert!(validate_instance_name("-x").is_err());
        assert!(validate_instance_name("a b").is_err());
        assert!(validate_instance_name("a/b").is_err());
        assert!(validate_instance_name(&"a".repeat(41)).is_err());
        for c in Component::ALL {
            assert_eq!(c.as_str().parse::<Component>(), Ok(c));
        }
    }
}
