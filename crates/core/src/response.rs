//! What an answer says about itself, beside its content and usage: the
//! id the upstream gave it, the model that wrote it, and why it stopped.
//! Read only where the gateway reads the answer anyway (its usage, or its
//! translation), for the request's trace spans.

use std::borrow::Cow;

/// An answer's id, model and finish reasons. Empty when unknown.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResponseInfo {
    /// The upstream's id for its answer (`chatcmpl-…`, `msg_…`).
    pub id: Option<String>,
    /// The model the upstream says wrote the answer (often a dated
    /// version of the one asked for).
    pub model: Option<String>,
    /// Why each choice stopped, in the order they finished, as the client
    /// received them: the upstream's own words when client and upstream
    /// speak the same API, else the client API's names for them.
    pub finish_reasons: Vec<Cow<'static, str>>,
}

/// Most answers stop for one of a few reasons; these are kept without
/// copying.
const COMMON_FINISH_REASONS: [&str; 10] = [
    "stop",
    "length",
    "tool_calls",
    "content_filter",
    "end_turn",
    "max_tokens",
    "tool_use",
    "stop_sequence",
    "refusal",
    "pause_turn",
];

impl ResponseInfo {
    /// Adds a finish reason (bounded: an answer has few choices, but the
    /// text is the upstream's).
    pub fn push_finish_reason(&mut self, reason: &str) {
        if self.finish_reasons.len() >= 16 || reason.is_empty() {
            return;
        }
        let reason = match COMMON_FINISH_REASONS
            .iter()
            .find(|common| **common == reason)
        {
            Some(common) => Cow::Borrowed(*common),
            None => Cow::Owned(bounded(reason)),
        };
        self.finish_reasons.push(reason);
    }

    /// Sets the id, if not known yet.
    pub fn note_id(&mut self, id: &str) {
        if self.id.is_none() && !id.is_empty() {
            self.id = Some(bounded(id));
        }
    }

    /// Sets the model, if not known yet.
    pub fn note_model(&mut self, model: &str) {
        if self.model.is_none() && !model.is_empty() {
            self.model = Some(bounded(model));
        }
    }

    pub fn is_empty(&self) -> bool {
        self.id.is_none() && self.model.is_none() && self.finish_reasons.is_empty()
    }
}

/// The upstream's text, cut to 256 bytes on a character boundary.
fn bounded(text: &str) -> String {
    let mut end = text.len().min(256);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_id_and_model_stay_and_reasons_are_bounded() {
        let mut info = ResponseInfo::default();
        assert!(info.is_empty());
        info.note_id("chatcmpl-1");
        info.note_id("chatcmpl-2");
        info.note_model("");
        info.note_model(&"é".repeat(200));
        assert_eq!(info.id.as_deref(), Some("chatcmpl-1"));
        assert_eq!(info.model.as_ref().map(String::len), Some(256));
        info.push_finish_reason("stop");
        info.push_finish_reason("a_new_reason");
        info.push_finish_reason("");
        assert!(matches!(info.finish_reasons[0], Cow::Borrowed("stop")));
        assert_eq!(info.finish_reasons[1], "a_new_reason");
        for _ in 0..40 {
            info.push_finish_reason("length");
        }
        assert_eq!(info.finish_reasons.len(), 16);
    }
}
