/// A value a metadata field must equal. Floats are left out on purpose: exact float equality is
/// rarely what a caller means, and Qdrant cannot match on it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum FilterValue {
    String(String),
    Integer(i64),
    Bool(bool),
}

impl FilterValue {
    /// The form stored in the keyword index, one term per metadata entry (`key=value`).
    pub(crate) fn term(&self, key: &str) -> String {
        match self {
            Self::String(s) => format!("{key}={s}"),
            Self::Integer(i) => format!("{key}={i}"),
            Self::Bool(b) => format!("{key}={b}"),
        }
    }

    pub fn from_json(value: &serde_json::Value) -> Option<Self> {
        match value {
            serde_json::Value::String(s) => Some(Self::String(s.clone())),
            serde_json::Value::Bool(b) => Some(Self::Bool(*b)),
            serde_json::Value::Number(n) => n.as_i64().map(Self::Integer),
            serde_json::Value::Null | serde_json::Value::Array(_) | serde_json::Value::Object(_) => None,
        }
    }
}

/// Every `(key, value)` must hold. Keys are validated by the gateway (`[A-Za-z0-9_-]+`).
pub type MetadataFilter = Vec<(String, FilterValue)>;
