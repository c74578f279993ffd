"""Multi-turn chat: the conversation is the program state; each turn appends to it.

    lmlang run examples/chat.py --model PATH

The chat template comes from the model's own tokenizer, so the same program works for any
chat model. `state.messages()` gives the conversation in OpenAI's message format.
"""

import lmlang as ll

QUESTIONS = [
    "Suggest a name for a coffee shop.",
    "Make it shorter.",
    "Now write a one-line slogan for it.",
]


@ll.function
def conversation(s, questions: list):
    s += ll.system("You are a creative but concise assistant.")
    # a loop over an argument: traced with the list given, it unrolls
    # (lmlang trace examples/chat.py:conversation --arg 'questions=["Hi", "Bye"]')
    for i, question in enumerate(questions):
        s += ll.user(question)
        s += ll.assistant(ll.gen(f"reply_{i}", max_tokens=24, stop="\n"))


@ll.function
def one_turn(s, history: list, question: str):
    """The same chat one turn at a time, as an app would run it: history in, reply out."""
    for message in history:
        with getattr(s, message["role"])():
            s += message["content"]
    s += ll.user(question)
    s += ll.assistant(ll.gen("reply", max_tokens=24, stop="\n"))


if __name__ == "__main__":
    state = conversation.run(questions=QUESTIONS, temperature=0.7, seed=1)
    for message in state.messages():
        print(f"{message['role']:>9}: {message['content']!r}")

    history = [{"role": "system", "content": "You are a creative but concise assistant."}]
    for question in QUESTIONS[:2]:
        turn = one_turn.run(history=history, question=question, temperature=0)
        history = turn.messages()
    print(f"\n{len(history)} messages after two incremental turns; last reply: {history[-1]['content']!r}")
