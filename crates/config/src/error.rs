//! Configuration errors: every problem names the file, the path inside it,
//! what is wrong and what to do about it.

use std::fmt;

/// One thing wrong with a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted path inside the file, such as `models[0].deployments[1].api_key`;
    /// empty when the problem concerns the whole file.
    pub path: String,
    pub message: String,
    pub fix: String,
}

/// All problems found in one configuration source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub source_name: String,
    pub problems: Vec<Problem>,
}

impl ConfigError {
    pub(crate) fn single(
        source: &str,
        path: &str,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) -> ConfigError {
        ConfigError {
            source_name: source.to_owned(),
            problems: vec![Problem {
                path: path.to_owned(),
                message: message.into(),
                fix: fix.into(),
            }],
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.problems.len();
        writeln!(
            f,
            "invalid configuration {}: {count} problem{}",
            self.source_name,
            if count == 1 { "" } else { "s" }
        )?;
        for problem in &self.problems {
            let location = if problem.path.is_empty() {
                self.source_name.clone()
            } else {
                format!("{}: {}", self.source_name, problem.path)
            };
            writeln!(f, "  - {location}: {}", problem.message)?;
            if !problem.fix.is_empty() {
                writeln!(f, "    fix: {}", problem.fix)?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}
