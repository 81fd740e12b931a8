//! Amazon Titan Text Embeddings V2 (`amazon.titan-embed-text-v2:0`) through
//! `InvokeModel`: the request body and the answer, as the model's page in
//! the Bedrock user guide gives them.

use serde::{Deserialize, Serialize};

use crate::canon::InvalidResponse;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TitanRequest<'a> {
    input_text: &'a str,
    /// 1024 (the model's default), 512 or 256; the model checks the value.
    #[serde(skip_serializing_if = "Option::is_none")]
    dimensions: Option<u32>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TitanResponse {
    embedding: Vec<f32>,
    input_text_token_count: Option<u64>,
}

/// The body for one input. `normalize` is left to its default (`true`),
/// which matches OpenAI's unit-length embeddings.
pub fn encode_embeddings_titan(input: &str, dimensions: Option<u32>) -> Vec<u8> {
    serde_json::to_vec(&TitanRequest {
        input_text: input,
        dimensions,
    })
    .expect("serialising a string and a number cannot fail")
}

/// The embedding and the input's token count.
pub fn decode_embeddings_titan(body: &[u8]) -> Result<(Vec<f32>, Option<u64>), InvalidResponse> {
    let response: TitanResponse = serde_json::from_slice(body).map_err(|error| {
        InvalidResponse(format!(
            "the upstream's answer is not a Titan embedding: {error}"
        ))
    })?;
    Ok((response.embedding, response.input_text_token_count))
}
