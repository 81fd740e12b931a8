//! Tests of the Anthropic dialect: request view, conversion, streams.
