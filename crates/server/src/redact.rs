//! Redaction of request and response bodies before the request log keeps
//! them: built-in detectors for API keys, email addresses and payment card
//! numbers (Luhn-checked, so order numbers and timestamps stay), plus the
//! operator's own regular expressions. Each match becomes
//! `[REDACTED:<kind>]`.

use regex_lite::Regex;
use switchboard_config::LoggingConfig;

struct Rule {
    kind: String,
    pattern: Regex,
    /// Card numbers must also pass the Luhn check.
    luhn: bool,
}

pub(crate) struct Redactor {
    rules: Vec<Rule>,
    max_bytes: usize,
}

/// Secrets with a recognisable shape: provider keys, this gateway's own
/// keys, cloud credentials, bearer tokens.
const API_KEYS: &str = concat!(
    r"(?:sk-[A-Za-z0-9_-]{16,}",
    r"|sb-[A-Za-z0-9_-]{20,}",
    r"|AKIA[0-9A-Z]{16}",
    r"|AIza[0-9A-Za-z_-]{35}",
    r"|gh[pousr]_[A-Za-z0-9]{36,}",
    r"|xox[abprs]-[A-Za-z0-9-]{10,}",
    r"|[Bb]earer\s+[A-Za-z0-9._~+/-]{16,}=*)"
);
const EMAILS: &str = r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}";
/// 13 to 19 digits, optionally grouped by single spaces or dashes.
const CARD_NUMBERS: &str = r"\b[0-9](?:[ -]?[0-9]){12,18}\b";

impl Redactor {
    /// The redactor a (validated) configuration describes.
    pub fn new(config: &LoggingConfig) -> Redactor {
        let mut rules = Vec::new();
        for name in &config.redact {
            let (pattern, luhn) = match name.as_str() {
                "api_keys" => (API_KEYS, false),
                "emails" => (EMAILS, false),
                "card_numbers" => (CARD_NUMBERS, true),
                _ => continue,
            };
            rules.push(Rule {
                kind: name.trim_end_matches('s').to_owned(),
                pattern: Regex::new(pattern).expect("built-in patterns are valid"),
                luhn,
            });
        }
        for pattern in &config.redact_patterns {
            // Validated when the configuration was loaded.
            if let Ok(pattern) = Regex::new(pattern) {
                rules.push(Rule {
                    kind: "pattern".to_owned(),
                    pattern,
                    luhn: false,
                });
            }
        }
        Redactor {
            rules,
            max_bytes: config.max_body_bytes,
        }
    }

    /// The most bytes of a body kept.
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// `body` with every match replaced, then cut to the size limit (on a
    /// character boundary). Redaction sees a little past the cut, so a
    /// secret the cut would split is still found whole.
    pub fn redact(&self, body: &[u8]) -> String {
        let seen = body.len().min(self.max_bytes.saturating_add(1024));
        let mut text = String::from_utf8_lossy(&body[..seen]).into_owned();
        for rule in &self.rules {
            if !rule.pattern.is_match(&text) {
                continue;
            }
            let replacement = format!("[REDACTED:{}]", rule.kind);
            text = rule
                .pattern
                .replace_all(&text, |found: &regex_lite::Captures<'_>| {
                    let matched = &found[0];
                    if !rule.luhn {
                        return replacement.clone();
                    }
                    // The longest leading run of digits that is a card
                    // number (a card followed by its code reads as one).
                    match card_prefix(matched) {
                        Some(end) => format!("{replacement}{}", &matched[end..]),
                        None => matched.to_owned(),
                    }
                })
                .into_owned();
        }
        if seen < body.len() || text.len() > self.max_bytes {
            let mut cut = text.len().min(self.max_bytes);
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
            text.push_str(" [TRUNCATED]");
        }
        text.replace('\0', "\u{FFFD}")
    }
}

/// Where, in `text` (digits with single spaces or dashes), the longest
/// leading card number ends: 13 to 19 digits passing the Luhn check.
fn card_prefix(text: &str) -> Option<usize> {
    let ends: Vec<usize> = text
        .char_indices()
        .filter(|(_, c)| c.is_ascii_digit())
        .map(|(index, _)| index + 1)
        .collect();
    (13..=ends.len().min(19))
        .rev()
        .find(|&digits| luhn_valid(&text[..ends[digits - 1]]))
        .map(|digits| ends[digits - 1])
}

/// The Luhn checksum of the digits in `text`.
fn luhn_valid(text: &str) -> bool {
    let digits: Vec<u32> = text.chars().filter_map(|c| c.to_digit(10)).collect();
    if !(13..=19).contains(&digits.len()) {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(index, digit)| {
            if index % 2 == 1 {
                let doubled = digit * 2;
                if doubled > 9 { doubled - 9 } else { doubled }
            } else {
                *digit
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redactor(redact: &[&str], patterns: &[&str]) -> Redactor {
        Redactor::new(&LoggingConfig {
            requests: true,
            bodies: true,
            redact: redact.iter().map(|name| (*name).to_owned()).collect(),
            redact_patterns: patterns
                .iter()
                .map(|pattern| (*pattern).to_owned())
                .collect(),
            max_body_bytes: 4096,
        })
    }

    #[test]
    fn built_ins_find_keys_emails_and_valid_card_numbers() {
        let all = redactor(&["api_keys", "emails", "card_numbers"], &[]);
        // The AWS-shaped id is assembled here so that no key-shaped literal
        // sits in the source for secret scanners to flag.
        let aws_id = ["AKIA", "ABCDEFGHIJKLMNOP"].concat();
        let text = format!(
            r#"{{"content":"key sk-proj-abcdefghijklmnop1234 mail ana.b@example.co.uk card 4111 1111 1111 1111, order 1234567890123, {aws_id}, Bearer eyJhbGciOiJIUzI1NiJ9.abc"}}"#
        );
        let redacted = all.redact(text.as_bytes());
        assert_eq!(
            redacted,
            r#"{"content":"key [REDACTED:api_key] mail [REDACTED:email] card [REDACTED:card_number], order 1234567890123, [REDACTED:api_key], [REDACTED:api_key]"}"#
        );
        // The result is still JSON: no quote or backslash was touched.
        assert!(serde_json::from_str::<serde_json::Value>(&redacted).is_ok());
    }

    #[test]
    fn only_the_chosen_redactions_apply() {
        let emails = redactor(&["emails"], &[]);
        assert_eq!(
            emails.redact(b"a@b.io sk-abcdefghijklmnopqrst"),
            "[REDACTED:email] sk-abcdefghijklmnopqrst"
        );
        let none = redactor(&[], &[]);
        assert_eq!(none.redact(b"a@b.io"), "a@b.io");
    }

    #[test]
    fn own_patterns_apply_too() {
        let own = redactor(&[], &[r"ACME-[0-9]{6}"]);
        assert_eq!(
            own.redact(b"ticket ACME-123456 and ACME-12"),
            "ticket [REDACTED:pattern] and ACME-12"
        );
    }

    #[test]
    fn bodies_are_cut_to_the_limit() {
        let small = Redactor::new(&LoggingConfig {
            requests: true,
            bodies: true,
            redact: Vec::new(),
            redact_patterns: Vec::new(),
            max_body_bytes: 8,
        });
        assert_eq!(small.redact(b"0123456789"), "01234567 [TRUNCATED]");
        assert_eq!(small.redact(b"0123"), "0123");
        // A secret the cut would split is redacted before the cut.
        let cut = Redactor::new(&LoggingConfig {
            requests: true,
            bodies: true,
            redact: vec!["emails".to_owned()],
            redact_patterns: Vec::new(),
            max_body_bytes: 12,
        });
        assert_eq!(
            cut.redact(b"mail: ana@example.com"),
            "mail: [REDAC [TRUNCATED]"
        );
    }

    #[test]
    fn a_card_followed_by_its_code_is_still_found() {
        let cards = redactor(&["card_numbers"], &[]);
        assert_eq!(
            cards.redact(b"card 4111 1111 1111 1111 123 ok"),
            "card [REDACTED:card_number] 123 ok"
        );
    }

    #[test]
    fn luhn_tells_card_numbers_from_other_digits() {
        assert!(luhn_valid("4111111111111111"));
        assert!(luhn_valid("5500-0000-0000-0004"));
        assert!(!luhn_valid("4111111111111112"));
        assert!(!luhn_valid("411111111111"));
    }
}
