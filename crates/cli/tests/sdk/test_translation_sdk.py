"""The official OpenAI and Anthropic Python SDKs, used as applications use
them, against a running Switchboard whose models are served by mocks of
each provider's API: OpenAI-compatible, Anthropic, Gemini and Bedrock. Every
provider must give every SDK the same answers: text, streams, tool calls,
images, structured output and errors. Run by tests/openai_sdk.rs, which
starts the gateway and the mock and passes the gateway's address in
SWITCHBOARD_ROOT_URL and its key in SWITCHBOARD_API_KEY."""

import json
import os
import unittest

import anthropic
import openai

ROOT = os.environ["SWITCHBOARD_ROOT_URL"]
KEY = os.environ["SWITCHBOARD_API_KEY"]
PROVIDERS = ["openai", "anthropic", "gemini", "bedrock"]
REPLY = "Hello from the mock"
PIXEL = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)
WEATHER = {
    "type": "object",
    "properties": {"location": {"type": "string"}},
    "required": ["location"],
}
ANSWER_SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string"}},
    "required": ["answer"],
    "additionalProperties": False,
}


def oai():
    return openai.OpenAI(base_url=ROOT + "/v1", api_key=KEY, max_retries=0, timeout=30)


def claude():
    return anthropic.Anthropic(base_url=ROOT, api_key=KEY, max_retries=0, timeout=30)


def model(provider):
    return "via-" + provider


class OpenAiClient(unittest.TestCase):
    def messages(self, content="What is the weather in Paris?"):
        return [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": content},
        ]

    def test_text(self):
        for provider in PROVIDERS:
            with self.subTest(provider=provider):
                completion = oai().chat.completions.create(
                    model=model(provider), messages=self.messages(), max_tokens=64
                )
                self.assertEqual(completion.choices[0].message.content, REPLY)
                self.assertEqual(completion.choices[0].finish_reason, "stop")
                self.assertEqual(completion.usage.prompt_tokens, 9)
                self.assertEqual(completion.usage.completion_tokens, 4)

    def test_stream(self):
        for provider in PROVIDERS:
            with self.subTest(provider=provider):
                stream = oai().chat.completions.create(
                    model=model(provider),
                    messages=self.messages(),
                    stream=True,
                    stream_options={"include_usage": True},
                )
                chunks = list(stream)
                text = "".join(
                    chunk.choices[0].delta.content or ""
                    for chunk in chunks
                    if chunk.choices
                )
                self.assertEqual(text, REPLY)
                finishes = [
                    chunk.choices[0].finish_reason
                    for chunk in chunks
                    if chunk.choices and chunk.choices[0].finish_reason
                ]
                self.assertEqual(finishes, ["stop"])
                self.assertEqual(chunks[-1].usage.completion_tokens, 4)

    def test_tool_calls(self):
        tools = [
            {
                "type": "function",
                "function": {"name": "get_weather", "parameters": WEATHER},
            }
        ]
        for provider in PROVIDERS:
            with self.subTest(provider=provider):
                completion = oai().chat.completions.create(
                    model=model(provider), messages=self.messages(), tools=tools
                )
                call = completion.choices[0].message.tool_calls[0]
                self.assertEqual(call.function.name, "get_weather")
                self.assertEqual(json.loads(call.function.arguments), {"location": "Paris"})
                self.assertEqual(completion.choices[0].finish_reason, "tool_calls")
                # The helper that accumulates streamed tool calls agrees.
                with oai().chat.completions.stream(
                    model=model(provider), messages=self.messages(), tools=tools
                ) as stream:
                    final = stream.get_final_completion()
                streamed = final.choices[0].message.tool_calls[0]
                self.assertEqual(streamed.function.name, "get_weather")
                self.assertEqual(json.loads(streamed.function.arguments), {"location": "Paris"})
                # The tool's result goes back, and the conversation goes on.
                follow_up = oai().chat.completions.create(
                    model=model(provider),
                    messages=self.messages()
                    + [
                        completion.choices[0].message.model_dump(exclude_none=True),
                        {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
                    ],
                )
                self.assertEqual(follow_up.choices[0].message.content, REPLY)

    def test_images(self):
        content = [
            {"type": "text", "text": "What is in this picture?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64," + PIXEL}},
        ]
        for provider in PROVIDERS:
            with self.subTest(provider=provider):
                completion = oai().chat.completions.create(
                    model=model(provider), messages=self.messages(content)
                )
                self.assertEqual(completion.choices[0].message.content, "I see 1 image(s)")
                with oai().chat.completions.stream(
                    model=model(provider), messages=self.messages(content)
                ) as stream:
                    final = stream.get_final_completion()
                self.assertEqual(final.choices[0].message.content, "I see 1 image(s)")

    def test_structured_output(self):
        for provider in PROVIDERS:
            with self.subTest(provider=provider):
                create = lambda: oai().chat.completions.create(
                    model=model(provider),
                    messages=self.messages(),
                    response_format={
                        "type": "json_schema",
                        "json_schema": {"name": "answer", "schema": ANSWER_SCHEMA, "strict": True},
                    },
                )
                if provider == "bedrock":
                    with self.assertRaises(openai.BadRequestError) as caught:
                        create()
                    self.assertIn("response_format", str(caught.exception))
                    continue
                completion = create()
                self.assertEqual(
                    json.loads(completion.choices[0].message.content), {"answer": "Paris"}
                )
                with oai().chat.completions.stream(
                    model=model(provider),
                    messages=self.messages(),
                    response_format={
                        "type": "json_schema",
                        "json_schema": {"name": "answer", "schema": ANSWER_SCHEMA, "strict": True},
                    },
                ) as stream:
                    final = stream.get_final_completion()
                self.assertEqual(json.loads(final.choices[0].message.content), {"answer": "Paris"})

    def test_errors_raise_the_sdks_own_exceptions(self):
        cases = [
            (400, openai.BadRequestError),
            (500, openai.InternalServerError),
            # Last: a 429 rests the deployment until its retry-after (0 here),
            # and the request after it is the probe that closes the circuit.
            (429, openai.RateLimitError),
        ]
        for provider in PROVIDERS:
            for status, error in cases:
                with self.subTest(provider=provider, status=status):
                    with self.assertRaises(error):
                        oai().chat.completions.create(
                            model=model(provider),
                            messages=self.messages("fail TRIGGER_%d" % status),
                        )
                    with self.assertRaises(error):
                        list(
                            oai().chat.completions.create(
                                model=model(provider),
                                messages=self.messages("fail TRIGGER_%d" % status),
                                stream=True,
                            )
                        )


class AnthropicClient(unittest.TestCase):
    def create(self, provider, content="What is the weather in Paris?", **extra):
        return claude().messages.create(
            model=model(provider),
            max_tokens=64,
            system="You are terse.",
            messages=[{"role": "user", "content": content}],
            **extra,
        )

    def test_text(self):
        for provider in PROVIDERS:
            with self.subTest(provider=provider):
                message = self.create(provider)
                self.assertEqual(message.type, "message")
                self.assertEqual(message.content[0].text, REPLY)
                self.assertEqual(message.stop_reason, "end_turn")
                usage = message.usage
                total_input = (
                    usage.input_tokens
                    + (usage.cache_read_input_tokens or 0)
                    + (usage.cache_creation_input_tokens or 0)
                )
                self.assertEqual(total_input, 9)
                self.assertEqual(usage.output_tokens, 4)

    def test_stream(self):
        for provider in PROVIDERS:
            with self.subTest(provider=provider):
                with claude().messages.stream(
                    model=model(provider),
                    max_tokens=64,
                    messages=[{"role": "user", "content": "Hello"}],
                ) as stream:
                    text = "".join(stream.text_stream)
                    final = stream.get_final_message()
                self.assertEqual(text, REPLY)
                self.assertEqual(final.content[0].text, REPLY)
                self.assertEqual(final.stop_reason, "end_turn")
                self.assertEqual(final.usage.output_tokens, 4)

    def test_tool_calls(self):
        tools = [{"name": "get_weather", "description": "Weather", "input_schema": WEATHER}]
        for provider in PROVIDERS:
            with self.subTest(provider=provider):
                message = self.create(provider, tools=tools)
                self.assertEqual(message.stop_reason, "tool_use")
                call = [block for block in message.content if block.type == "tool_use"][0]
                self.assertEqual(call.name, "get_weather")
                self.assertEqual(call.input, {"location": "Paris"})
                with claude().messages.stream(
                    model=model(provider),
                    max_tokens=64,
                    tools=tools,
                    messages=[{"role": "user", "content": "Weather in Paris?"}],
                ) as stream:
                    final = stream.get_final_message()
                streamed = [block for block in final.content if block.type == "tool_use"][0]
                self.assertEqual(streamed.input, {"location": "Paris"})
                follow_up = claude().messages.create(
                    model=model(provider),
                    max_tokens=64,
                    tools=tools,
                    messages=[
                        {"role": "user", "content": "Weather in Paris?"},
                        {"role": "assistant", "content": [block.model_dump() for block in message.content]},
                        {
                            "role": "user",
                            "content": [
                                {"type": "tool_result", "tool_use_id": call.id, "content": "sunny"}
                            ],
                        },
                    ],
                )
                self.assertEqual(follow_up.stop_reason, "tool_use")

    def test_images(self):
        content = [
            {"type": "text", "text": "What is in this picture?"},
            {
                "type": "image",
                "source": {"type": "base64", "media_type": "image/png", "data": PIXEL},
            },
        ]
        for provider in PROVIDERS:
            with self.subTest(provider=provider):
                message = self.create(provider, content=content)
                self.assertEqual(message.content[0].text, "I see 1 image(s)")
                with claude().messages.stream(
                    model=model(provider),
                    max_tokens=64,
                    messages=[{"role": "user", "content": content}],
                ) as stream:
                    self.assertEqual("".join(stream.text_stream), "I see 1 image(s)")

    def test_structured_output(self):
        output_config = {"format": {"type": "json_schema", "schema": ANSWER_SCHEMA}}
        for provider in PROVIDERS:
            with self.subTest(provider=provider):
                if provider == "bedrock":
                    with self.assertRaises(anthropic.BadRequestError) as caught:
                        self.create(provider, extra_body={"output_config": output_config})
                    self.assertIn("output_config.format", str(caught.exception))
                    continue
                message = self.create(provider, extra_body={"output_config": output_config})
                self.assertEqual(json.loads(message.content[0].text), {"answer": "Paris"})
                with claude().messages.stream(
                    model=model(provider),
                    max_tokens=64,
                    messages=[{"role": "user", "content": "Capital of France?"}],
                    extra_body={"output_config": output_config},
                ) as stream:
                    final = stream.get_final_message()
                self.assertEqual(json.loads(final.content[0].text), {"answer": "Paris"})

    def test_errors_raise_the_sdks_own_exceptions(self):
        cases = [
            (400, anthropic.BadRequestError),
            (500, anthropic.InternalServerError),
            (429, anthropic.RateLimitError),
        ]
        for provider in PROVIDERS:
            for status, error in cases:
                with self.subTest(provider=provider, status=status):
                    with self.assertRaises(error):
                        self.create(provider, content="fail TRIGGER_%d" % status)
                    with self.assertRaises(error):
                        with claude().messages.stream(
                            model=model(provider),
                            max_tokens=64,
                            messages=[{"role": "user", "content": "fail TRIGGER_%d" % status}],
                        ) as stream:
                            stream.get_final_message()


if __name__ == "__main__":
    unittest.main(verbosity=2)
