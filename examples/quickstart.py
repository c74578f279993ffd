"""Quickstart: a question, an answer, and a typed value.

    lmlang run examples/quickstart.py                      # the built-in tiny model
    lmlang run examples/quickstart.py --model PATH         # a real checkpoint
    lmlang trace examples/quickstart.py:qa                 # the program as a DAG

With no backend given, lmlang runs the embedded default model: tiny and random, so its words
are noise, but constrained values (the int below) are always well-formed.
"""

import lmlang as ll


@ll.function
def qa(s, question: str):
    s += ll.system("You are a helpful assistant. Answer briefly.")
    s += ll.user(question)
    s += ll.assistant(ll.gen("answer", max_tokens=32, stop="\n"))
    s += ll.user("How confident are you, from 0 to 100?")
    s += ll.assistant(ll.gen_int("confidence", max_tokens=4))


if __name__ == "__main__":
    state = qa.run(question="What is the capital of France?", temperature=0)
    print("answer:    ", repr(state["answer"]))
    print("confidence:", state["confidence"], type(state["confidence"]).__name__)
    print("messages:  ", len(state.messages()), "turns")
