"""The official OpenAI Python SDK, used as any application would use it,
against a running Switchboard. Run by tests/openai_sdk.rs, which starts the
gateway and passes its address in SWITCHBOARD_BASE_URL and its key in
SWITCHBOARD_API_KEY."""

import math
import os
import unittest

import openai
from openai import OpenAI

BASE_URL = os.environ["SWITCHBOARD_BASE_URL"]
API_KEY = os.environ["SWITCHBOARD_API_KEY"]
MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Say hello to the SDK"},
]


def client(key=API_KEY):
    return OpenAI(base_url=BASE_URL, api_key=key, max_retries=0, timeout=30)


class Chat(unittest.TestCase):
    def test_plain_completion(self):
        raw = client().chat.completions.with_raw_response.create(
            model="simulated-chat", messages=MESSAGES
        )
        self.assertTrue(raw.headers["x-request-id"].startswith("req_"))
        self.assertEqual(raw.headers["x-switchboard-deployment"], "simulated-chat")
        completion = raw.parse()
        self.assertEqual(completion.object, "chat.completion")
        self.assertEqual(completion.choices[0].message.role, "assistant")
        self.assertTrue(
            completion.choices[0].message.content.startswith(
                "Simulated reply to: Say hello to the SDK"
            )
        )
        self.assertEqual(completion.choices[0].finish_reason, "stop")
        self.assertEqual(completion.usage.completion_tokens, 24)
        self.assertEqual(
            completion.usage.total_tokens,
            completion.usage.prompt_tokens + completion.usage.completion_tokens,
        )

    def test_streaming_yields_the_same_text_and_usage_when_asked(self):
        plain = client().chat.completions.create(model="simulated-chat", messages=MESSAGES)
        stream = client().chat.completions.create(
            model="simulated-chat",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
        text = "".join(
            chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices
        )
        self.assertEqual(text, plain.choices[0].message.content)
        self.assertEqual(chunks[-1].choices, [])
        self.assertEqual(chunks[-1].usage.completion_tokens, 24)
        finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        self.assertEqual(finish, ["stop"])

    def test_streaming_without_usage_has_no_usage_chunk(self):
        chunks = list(
            client().chat.completions.create(
                model="simulated-chat", messages=MESSAGES, stream=True, max_tokens=4
            )
        )
        self.assertTrue(all(chunk.choices for chunk in chunks))
        self.assertTrue(all(chunk.usage is None for chunk in chunks))
        self.assertEqual(chunks[-1].choices[0].finish_reason, "length")

    def test_a_real_upstream_is_relayed_with_extra_fields(self):
        completion = client().chat.completions.create(
            model="mock-chat",
            messages=MESSAGES,
            extra_body={"x_passthrough": {"kept": True}},
        )
        self.assertEqual(completion.choices[0].message.content, "Hello from the mock")
        self.assertEqual(completion.usage.prompt_tokens_details.cached_tokens, 2)

    def test_a_real_upstream_streams(self):
        stream = client().chat.completions.create(
            model="mock-chat", messages=MESSAGES, stream=True
        )
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        self.assertEqual(text, "Hello from the mock")


class Embeddings(unittest.TestCase):
    def test_default_base64_encoding_is_decoded_by_the_sdk(self):
        response = client().embeddings.create(
            model="simulated-embedding", input=["first text", "second text"]
        )
        self.assertEqual(len(response.data), 2)
        vector = response.data[0].embedding
        self.assertEqual(len(vector), 256)
        self.assertAlmostEqual(math.sqrt(sum(v * v for v in vector)), 1.0, places=4)
        self.assertEqual(response.usage.prompt_tokens, 4)

    def test_float_encoding_gives_the_same_vectors(self):
        packed = client().embeddings.create(model="simulated-embedding", input="same")
        floats = client().embeddings.create(
            model="simulated-embedding", input="same", encoding_format="float", dimensions=256
        )
        for a, b in zip(packed.data[0].embedding, floats.data[0].embedding):
            self.assertAlmostEqual(a, b, places=5)


class Models(unittest.TestCase):
    def test_list_and_retrieve(self):
        ids = [model.id for model in client().models.list()]
        self.assertEqual(
            ids, ["simulated-chat", "simulated-embedding", "flaky", "mock-chat", "mock-broken"]
        )
        model = client().models.retrieve("simulated-chat")
        self.assertEqual(model.id, "simulated-chat")
        self.assertEqual(model.owned_by, "switchboard")


class Errors(unittest.TestCase):
    def test_unknown_model_is_not_found(self):
        with self.assertRaises(openai.NotFoundError) as caught:
            client().chat.completions.create(model="no-such-model", messages=MESSAGES)
        self.assertEqual(caught.exception.code, "model_not_found")

    def test_wrong_key_is_an_authentication_error(self):
        with self.assertRaises(openai.AuthenticationError):
            client("sb-not-the-key").models.list()

    def test_bad_parameter_is_a_bad_request(self):
        with self.assertRaises(openai.BadRequestError) as caught:
            client().chat.completions.create(
                model="simulated-chat", messages=MESSAGES, temperature="hot"
            )
        self.assertEqual(caught.exception.param, "temperature")

    def test_upstream_failure_is_a_server_error(self):
        with self.assertRaises(openai.InternalServerError) as caught:
            client().chat.completions.create(model="flaky", messages=MESSAGES)
        self.assertEqual(caught.exception.status_code, 502)

    def test_error_inside_a_stream_is_raised(self):
        stream = client().chat.completions.create(
            model="mock-broken", messages=MESSAGES, stream=True
        )
        with self.assertRaises(openai.APIError) as caught:
            list(stream)
        self.assertIn("overloaded", str(caught.exception))


if __name__ == "__main__":
    unittest.main(verbosity=2)
