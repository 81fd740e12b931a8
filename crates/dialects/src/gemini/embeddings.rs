//! `models.batchEmbedContents`: one embedding request per input text, and
//! the `embeddings` list that answers them in the same order.

use serde::{Deserialize, Serialize};

use super::response::parse_object;
use crate::canon::InvalidResponse;

#[derive(Serialize)]
struct BatchRequest<'a> {
    requests: Vec<EmbedRequest<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EmbedRequest<'a> {
    /// Must name the same model as the URL, as `models/{model}`.
    model: &'a str,
    content: EmbedContent<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output_dimensionality: Option<u32>,
}

#[derive(Serialize)]
struct EmbedContent<'a> {
    parts: [TextPart<'a>; 1],
}

#[derive(Serialize)]
struct TextPart<'a> {
    text: &'a str,
}

/// The body for `POST .../models/{model}:batchEmbedContents`. A model given
/// without a collection (`text-embedding-004`) is written
/// `models/text-embedding-004`; one that has it is kept as is.
pub fn encode_embeddings(model: &str, inputs: &[String], dimensions: Option<u32>) -> Vec<u8> {
    let qualified;
    let model = if model.contains('/') {
        model
    } else {
        qualified = format!("models/{model}");
        &qualified
    };
    let batch = BatchRequest {
        requests: inputs
            .iter()
            .map(|input| EmbedRequest {
                model,
                content: EmbedContent {
                    parts: [TextPart { text: input }],
                },
                output_dimensionality: dimensions,
            })
            .collect(),
    };
    serde_json::to_vec(&batch).expect("serialising strings and integers cannot fail")
}

#[derive(Deserialize)]
struct BatchResponse {
    embeddings: Vec<ContentEmbedding>,
}

#[derive(Deserialize)]
struct ContentEmbedding {
    values: Vec<f32>,
}

/// Reads a `batchEmbedContents` answer, `{"embeddings": [{"values": [...]}]}`,
/// into one vector per input, in order.
pub fn decode_embeddings(body: &[u8]) -> Result<Vec<Vec<f32>>, InvalidResponse> {
    let response: BatchResponse = parse_object(body, "batchEmbedContents response")?;
    Ok(response
        .embeddings
        .into_iter()
        .map(|embedding| embedding.values)
        .collect())
}
