//! `[[model_groups]]`: names clients may ask for as `model`, each an ordered fallback over LLM
//! backends. Members of equal priority share the load in proportion to their weights.
//!
//! ```toml
//! [[model_groups]]
//! name = "chat-large"
//! backends = ["openai-primary", { backend = "azure-backup", priority = 1, weight = 2 }, "local"]
//! ```

use serde::{Deserialize, Serialize};

use super::LlmBackendConfig;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelGroupConfig {
    pub name: String,
    /// Tried in order of priority (default: the position in this list).
    pub backends: Vec<GroupMember>,
}

/// A backend's name, or the backend with its place in the group.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum GroupMember {
    Name(String),
    Entry(MemberEntry),
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MemberEntry {
    pub backend: String,
    /// Lower is tried first. Default: the position in the group.
    #[serde(default)]
    pub priority: Option<u32>,
    /// Among members of equal priority, its share of the load. Default 1.
    #[serde(default)]
    pub weight: Option<u32>,
}

/// A member as the pool uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub backend: String,
    pub priority: u32,
    pub weight: u32,
}

impl ModelGroupConfig {
    /// The members with their priorities (position by default) and weights (1 by default).
    pub fn members(&self) -> Vec<Member> {
        self.backends
            .iter()
            .enumerate()
            .map(|(position, member)| match member {
                GroupMember::Name(backend) => Member {
                    backend: backend.clone(),
                    priority: position as u32,
                    weight: 1,
                },
                GroupMember::Entry(entry) => Member {
                    backend: entry.backend.clone(),
                    priority: entry.priority.unwrap_or(position as u32),
                    weight: entry.weight.unwrap_or(1),
                },
            })
            .collect()
    }
}

/// What is wrong with `groups` given `backends`; each message names the key and the fix.
pub fn problems(groups: &[ModelGroupConfig], backends: &[LlmBackendConfig]) -> Vec<String> {
    let mut problems = Vec::new();
    for (i, group) in groups.iter().enumerate() {
        let key = format!("model_groups[{i}]");
        let well_formed = !group.name.is_empty()
            && group
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !well_formed {
            problems.push(format!(
                "{key}.name = {:?}: use letters, digits, ., - and _",
                group.name
            ));
        }
        if groups[..i].iter().any(|g| g.name == group.name) {
            problems.push(format!("{key}.name = {:?} is used twice", group.name));
        }
        if backends.iter().any(|b| b.name == group.name) {
            problems.push(format!(
                "{key}.name = {:?} is an LLM backend's name: a client could not tell them apart",
                group.name
            ));
        }
        if group.backends.is_empty() {
            problems.push(format!(
                "{key}.backends is empty: name at least one [[llm]] backend"
            ));
        }
        let members = group.members();
        for (j, member) in members.iter().enumerate() {
            if !backends.iter().any(|b| b.name == member.backend) {
                problems.push(format!(
                    "{key}.backends[{j}] = {:?} is not a configured [[llm]] backend",
                    member.backend
                ));
            }
            if members[..j].iter().any(|m| m.backend == member.backend) {
                problems.push(format!(
                    "{key}.backends[{j}] = {:?} is listed twice",
                    member.backend
                ));
            }
            if member.weight == 0 {
                problems.push(format!("{key}.backends[{j}].weight must be at least 1"));
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml: &str) -> Result<Vec<ModelGroupConfig>, String> {
        #[derive(Deserialize)]
        struct Groups {
            model_groups: Vec<ModelGroupConfig>,
        }
        use figment::providers::Format;
        let groups: Groups = figment::Figment::from(figment::providers::Toml::string(toml))
            .extract()
            .map_err(|e| e.to_string())?;
        Ok(groups.model_groups)
    }

    fn backend(name: &str) -> LlmBackendConfig {
        LlmBackendConfig {
            name: name.into(),
            priority: None,
            timeout_ms: None,
            ttft_timeout_ms: None,
            idle_timeout_ms: None,
            unmetered: false,
            kind: super::super::LlmBackendKind::Local {
                model: "m".into(),
                dequantize: true,
                context_tokens: None,
            },
        }
    }

    #[test]
    fn members_are_names_or_entries_with_defaults_by_position() -> Result<(), String> {
        let groups = parse(
            "[[model_groups]]\nname = \"chat-large\"\nbackends = [\"a\", { backend = \"b\", weight = 3 }, { backend = \"c\", priority = 0 }]\n",
        )?;
        let members = groups[0].members();
        let summary: Vec<(&str, u32, u32)> = members
            .iter()
            .map(|m| (m.backend.as_str(), m.priority, m.weight))
            .collect();
        assert_eq!(summary, [("a", 0, 1), ("b", 1, 3), ("c", 0, 1)]);
        assert!(problems(&groups, &[backend("a"), backend("b"), backend("c")]).is_empty());
        Ok(())
    }

    #[test]
    fn unknown_repeated_or_clashing_names_are_refused() -> Result<(), String> {
        let groups = parse(
            "[[model_groups]]\nname = \"a\"\nbackends = [\"a\", \"a\", \"ghost\", { backend = \"b\", weight = 0 }]\n\n[[model_groups]]\nname = \"a\"\nbackends = []\n",
        )?;
        let found = problems(&groups, &[backend("a"), backend("b")]).join("\n");
        for expected in [
            "is an LLM backend's name",
            "is listed twice",
            "\"ghost\" is not a configured",
            "weight must be at least 1",
            "is used twice",
            "backends is empty",
        ] {
            assert!(found.contains(expected), "{expected}: {found}");
        }
        assert!(
            parse("[[model_groups]]\nname = \"g\"\nbackends = [{ backend = \"a\", wieght = 2 }]\n").is_err()
        );
        Ok(())
    }
}
