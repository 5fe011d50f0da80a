//! `[[model_groups]]`: names clients may ask for as `model`, each an ordered fallback over LLM
//! backends. Members of equal priority share the load in proportion to their weights.
//!
//! ```toml
//! [[model_groups]]
//! name = "chat-large"
//! backends = ["openai-primary", { backend = "azure-backup", model = "gpt-4o", priority = 1, weight = 2 }, "local"]
//! ```

use serde::{Deserialize, Serialize};

use super::{LlmBackendConfig, LlmBackendKind};

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
    /// The model id to ask a remote (`openai`) backend for in this group. Default: its own.
    #[serde(default)]
    pub model: Option<String>,
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
    /// The model id asked for, when not the backend's own.
    pub model: Option<String>,
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
                    model: None,
                    priority: position as u32,
                    weight: 1,
                },
                GroupMember::Entry(entry) => Member {
                    backend: entry.backend.clone(),
                    model: entry.model.clone(),
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
        problems.extend(member_problems(&key, &group.members(), backends));
    }
    problems
}

/// What is wrong with one group's members (`key` names the group).
fn member_problems(key: &str, members: &[Member], backends: &[LlmBackendConfig]) -> Vec<String> {
    let mut problems = Vec::new();
    for (j, member) in members.iter().enumerate() {
        let entry = format!("{key}.backends[{j}]");
        match backends.iter().find(|b| b.name == member.backend) {
            None => problems.push(format!(
                "{entry} = {:?} is not a configured [[llm]] backend",
                member.backend
            )),
            Some(b) if member.model.is_some() && !matches!(b.kind, LlmBackendKind::Openai { .. }) => {
                problems.push(format!(
                    "{entry}.model: only a remote (openai) backend can be asked for another model; add an [[llm]] for another local one"
                ))
            }
            Some(_) => {}
        }
        if members[..j]
            .iter()
            .any(|m| m.backend == member.backend && m.model == member.model)
        {
            problems.push(format!("{entry} = {:?} is listed twice", member.backend));
        }
        if member.weight == 0 {
            problems.push(format!("{entry}.weight must be at least 1"));
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
            accepts_prefill: true,
            kind: super::super::LlmBackendKind::Local {
                model: "m".into(),
                dequantize: None,
                context_tokens: None,
                kv_tokens: 16_384,
            },
        }
    }

    fn remote(name: &str) -> LlmBackendConfig {
        LlmBackendConfig {
            kind: LlmBackendKind::Openai {
                base_url: "http://127.0.0.1:1/v1".into(),
                model: "m1".into(),
                api_key_env: None,
                max_retries: 0,
            },
            ..backend(name)
        }
    }

    #[test]
    fn members_are_names_or_entries_with_defaults_by_position() -> Result<(), String> {
        let groups = parse(
            "[[model_groups]]\nname = \"chat-large\"\nbackends = [\"a\", { backend = \"b\", weight = 3 }, { backend = \"c\", priority = 0 }, { backend = \"r\", model = \"m2\" }]\n",
        )?;
        let members = groups[0].members();
        let summary: Vec<(&str, Option<&str>, u32, u32)> = members
            .iter()
            .map(|m| (m.backend.as_str(), m.model.as_deref(), m.priority, m.weight))
            .collect();
        assert_eq!(
            summary,
            [
                ("a", None, 0, 1),
                ("b", None, 1, 3),
                ("c", None, 0, 1),
                ("r", Some("m2"), 3, 1)
            ]
        );
        let backends = [backend("a"), backend("b"), backend("c"), remote("r")];
        assert!(
            problems(&groups, &backends).is_empty(),
            "{:?}",
            problems(&groups, &backends)
        );
        let local_model =
            parse("[[model_groups]]\nname = \"g\"\nbackends = [{ backend = \"a\", model = \"x\" }]\n")?;
        let found = problems(&local_model, &backends).join("\n");
        assert!(found.contains("only a remote (openai) backend"), "{found}");
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
