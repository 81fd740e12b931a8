//! The AWS shared config and credentials files (`~/.aws/config`,
//! `~/.aws/credentials`), parsed as the AWS SDKs read them.
//!
//! - A section is `[name]`; in the config file every profile but the
//!   default is `[profile name]`, and a `[profile default]` replaces a
//!   `[default]`. In the credentials file a section is the bare name. Other
//!   sections (`[sso-session x]`, `[services x]`, misplaced names) are read
//!   for their syntax and otherwise ignored.
//! - A property is `name = value`; names are case-insensitive (kept in
//!   lowercase), values are trimmed. ` #` or ` ;` after whitespace starts a
//!   comment on a property line; in a section header any `#` or `;` after
//!   the `]` does. A line whose first non-blank character is `#` or `;` is
//!   a comment.
//! - A line that starts with whitespace continues the property above
//!   (the nested form some settings use); it is kept, joined by a newline.
//! - Repeated sections merge and a repeated property keeps its last value.
//!
//! Errors give the line number and what was expected, never the line
//! itself, which may hold a secret.

use std::collections::HashMap;

/// Which of the two files is being read; they name profiles differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FileKind {
    Config,
    Credentials,
}

/// A profile's properties, by lowercase name.
pub(crate) type Properties = HashMap<String, String>;

/// The profiles of one file, by profile name (`profile ` already removed).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct ProfileSet {
    profiles: HashMap<String, Properties>,
}

impl ProfileSet {
    pub(crate) fn get(&self, profile: &str) -> Option<&Properties> {
        self.profiles.get(profile)
    }
}

/// A line that is not valid in a profile file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ParseError {
    /// 1-based.
    pub(crate) line: usize,
    pub(crate) message: &'static str,
}

/// Where the parser is in the file.
enum Section {
    /// Before the first section header.
    None,
    /// Inside a section that is not a profile of this kind of file.
    Ignored,
    /// Inside a profile section.
    Profile(Target),
}

#[derive(Clone, PartialEq, Eq, Hash)]
enum Target {
    Named(String),
    /// `[default]` in the config file, which `[profile default]` overrides.
    BareDefault,
}

pub(crate) fn parse(text: &str, kind: FileKind) -> Result<ProfileSet, ParseError> {
    let mut sections: HashMap<Target, Properties> = HashMap::new();
    let mut section = Section::None;
    // The property a continuation line would extend.
    let mut last_property: Option<String> = None;

    for (index, line) in text.lines().enumerate() {
        let error = |message| ParseError {
            line: index + 1,
            message,
        };
        let trimmed = line.trim_matches(WHITESPACE);
        if trimmed.is_empty() || trimmed.starts_with(COMMENT) {
            continue;
        }
        if line.starts_with('[') {
            let header = strip_comment(line, false);
            let name = header
                .strip_prefix('[')
                .and_then(|rest| rest.strip_suffix(']'))
                .ok_or_else(|| error("a section header must end with `]`"))?;
            section = match section_target(name, kind) {
                Some(target) => {
                    sections.entry(target.clone()).or_default();
                    Section::Profile(target)
                }
                None => Section::Ignored,
            };
            last_property = None;
        } else if line.starts_with(WHITESPACE) {
            let property = last_property
                .as_ref()
                .ok_or_else(|| error("an indented line must continue a property"))?;
            if let Section::Profile(target) = &section
                && let Some(value) = sections
                    .get_mut(target)
                    .and_then(|properties| properties.get_mut(property))
            {
                value.push('\n');
                value.push_str(trimmed);
            }
        } else {
            if matches!(section, Section::None) {
                return Err(error("a property must follow a `[section]` header"));
            }
            let (name, value) = strip_comment(line, true)
                .split_once('=')
                .ok_or_else(|| error("a property must be `name = value`"))?;
            let name = name.trim_matches(WHITESPACE).to_ascii_lowercase();
            if name.is_empty() {
                return Err(error("a property must have a name before `=`"));
            }
            let value = value.trim_matches(WHITESPACE).to_owned();
            if let Section::Profile(target) = &section {
                sections
                    .entry(target.clone())
                    .or_default()
                    .insert(name.clone(), value);
            }
            last_property = Some(name);
        }
    }

    let bare_default = sections.remove(&Target::BareDefault);
    let mut profiles: HashMap<String, Properties> = sections
        .into_iter()
        .filter_map(|(target, properties)| match target {
            Target::Named(name) => Some((name, properties)),
            Target::BareDefault => None,
        })
        .collect();
    if let Some(properties) = bare_default {
        profiles.entry(DEFAULT.to_owned()).or_insert(properties);
    }
    Ok(ProfileSet { profiles })
}

const WHITESPACE: &[char] = &[' ', '\t'];
const COMMENT: &[char] = &['#', ';'];
const DEFAULT: &str = "default";

/// The profile a section header names in this kind of file, or `None` for
/// a section this loader does not read.
fn section_target(header: &str, kind: FileKind) -> Option<Target> {
    let header = header.trim_matches(WHITESPACE);
    let (prefix, name) = match header.split_once(WHITESPACE) {
        Some((prefix, name)) => (Some(prefix), name.trim_matches(WHITESPACE)),
        None => (None, header),
    };
    if name.is_empty() {
        return None;
    }
    match (kind, prefix) {
        (FileKind::Config, Some("profile")) => Some(Target::Named(name.to_owned())),
        (FileKind::Config, None) if name == DEFAULT => Some(Target::BareDefault),
        (FileKind::Credentials, None) => Some(Target::Named(name.to_owned())),
        _ => {
            tracing::debug!(
                section = header,
                ?kind,
                "AWS profile file section ignored: not a profile of this file"
            );
            None
        }
    }
}

/// The line without surrounding whitespace and without a trailing comment.
/// On property lines a comment needs whitespace before it, so that values
/// such as `a;b` survive.
fn strip_comment(line: &str, needs_whitespace: bool) -> &str {
    let line = line.trim_matches(WHITESPACE);
    let mut previous_is_whitespace = false;
    for (index, character) in line.char_indices() {
        if COMMENT.contains(&character) && (previous_is_whitespace || !needs_whitespace) {
            return line[..index].trim_matches(WHITESPACE);
        }
        previous_is_whitespace = character.is_whitespace();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sorted(set: &ProfileSet, profile: &str) -> Vec<(String, String)> {
        let mut pairs: Vec<(String, String)> = set
            .get(profile)
            .map(|properties| {
                properties
                    .iter()
                    .map(|(name, value)| (name.clone(), value.clone()))
                    .collect()
            })
            .unwrap_or_default();
        pairs.sort();
        pairs
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
            .collect()
    }

    #[test]
    fn comments_whitespace_and_key_case_are_read_as_aws_reads_them() {
        let text = "# a comment\n\
                    ; another\n\
                    [default] # trailing comment\n\
                    AWS_Access_Key_ID = AKID ; comment\n\
                    aws_secret_access_key\t=  se;cr#et  \n\
                    \x20\x20# indented comment\n\
                    region=eu-west-1\n\
                    s3 =\n\
                    \x20\x20max_concurrent_requests = 20\n\
                    \n\
                    [ other ]\n\
                    region = a\n\
                    [other]\n\
                    region = b\n\
                    Region = c\r\n";
        let set = parse(text, FileKind::Credentials).unwrap();
        assert_eq!(
            sorted(&set, "default"),
            pairs(&[
                ("aws_access_key_id", "AKID"),
                ("aws_secret_access_key", "se;cr#et"),
                ("region", "eu-west-1"),
                ("s3", "\nmax_concurrent_requests = 20"),
            ])
        );
        // Repeated sections merge; the last value of a property wins,
        // whatever the case of its name; CRLF line ends are accepted.
        assert_eq!(sorted(&set, "other"), pairs(&[("region", "c")]));
    }

    #[test]
    fn each_file_names_its_profiles_its_own_way() {
        let config = "[default]\nregion = bare\n\
                      [profile default]\nregion = prefixed\n\
                      [profile   dev  ]\nregion = dev-region\n\
                      [prod]\nregion = ignored\n\
                      [sso-session corp]\nsso_region = us-east-1\n";
        let set = parse(config, FileKind::Config).unwrap();
        // `[profile default]` replaces `[default]` whole.
        assert_eq!(sorted(&set, "default"), pairs(&[("region", "prefixed")]));
        assert_eq!(sorted(&set, "dev"), pairs(&[("region", "dev-region")]));
        assert_eq!(set.get("prod"), None);
        assert_eq!(set.get("corp"), None);
        assert_eq!(set.get("sso-session corp"), None);

        let set = parse("[default]\nregion = bare\n", FileKind::Config).unwrap();
        assert_eq!(sorted(&set, "default"), pairs(&[("region", "bare")]));

        let credentials = "[dev]\na = 1\n[profile prod]\na = 2\n";
        let set = parse(credentials, FileKind::Credentials).unwrap();
        assert_eq!(sorted(&set, "dev"), pairs(&[("a", "1")]));
        assert_eq!(set.get("prod"), None);
        assert_eq!(set.get("profile prod"), None);
    }

    #[test]
    fn malformed_lines_are_reported_by_number_without_their_text() {
        let cases = [
            ("aws_secret_access_key = hunter2\n", 1, "follow"),
            ("[default]\nhunter2\n", 2, "name = value"),
            ("[default]\n= hunter2\n", 2, "name before"),
            ("# c\n[default\n", 2, "end with"),
            ("[default]\n  hunter2\n", 2, "continue"),
        ];
        for (text, line, fragment) in cases {
            let error = parse(text, FileKind::Credentials).unwrap_err();
            assert_eq!(error.line, line, "{text:?}");
            assert!(error.message.contains(fragment), "{text:?}: {error:?}");
            assert!(!error.message.contains("hunter2"));
        }
    }
}
