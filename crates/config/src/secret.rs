//! Secrets read from the configuration: API keys, the master key, header
//! values. A `Secret` never prints its value; `Debug` and `Display` show
//! where it came from instead.

use std::fmt;

#[derive(Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// Expanded from one or more `${VAR}` references; holds the names.
    Env(Vec<String>),
    /// Written literally in the file.
    Inline,
}

#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    value: String,
    source: SecretSource,
}

impl Secret {
    pub fn new(value: String, source: SecretSource) -> Secret {
        Secret { value, source }
    }

    /// The secret's value, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.value
    }

    pub fn source(&self) -> &SecretSource {
        &self.source
    }

    /// A description safe to print: the variable it came from and its length.
    pub fn masked(&self) -> String {
        match &self.source {
            SecretSource::Env(names) => {
                let names: Vec<String> = names.iter().map(|name| format!("${{{name}}}")).collect();
                format!("{} ({} chars)", names.join(""), self.value.chars().count())
            }
            SecretSource::Inline => format!("inline ({} chars)", self.value.chars().count()),
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({})", self.masked())
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}
