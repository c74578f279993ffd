"""JSON extraction with a schema: the output is valid JSON for the schema, whatever the model.

    lmlang run examples/json_extract.py --model PATH

`gen(json_schema=...)` takes a pydantic model class, a dict or a JSON string. Decoding is
constrained token by token, so `json.loads` and the pydantic model accept the result.
"""

import json

from pydantic import BaseModel, Field

import lmlang as ll


class Contact(BaseModel):
    name: str = Field(max_length=24)
    age: int
    email_known: bool


TEXT = "Hi, I'm Ada Lovelace, 36 years old. You can't reach me by email, only by letter."


@ll.function
def extract(s, text: str):
    s += ll.system("Extract the contact as JSON.")
    s += ll.user(text)
    s += ll.assistant(ll.gen("contact", max_tokens=96, json_schema=Contact))


if __name__ == "__main__":
    state = extract.run(text=TEXT, temperature=0)
    raw = state["contact"]
    contact = Contact.model_validate(json.loads(raw))
    print("raw JSON:", raw)
    print("parsed:  ", contact)
