//! Tests of the OpenAI dialect's conversion to and from the internal model.
