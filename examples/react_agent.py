"""A ReAct agent: the model thinks, picks an action, and calls a Python tool; we feed back the result.

    lmlang run examples/react_agent.py --model PATH

The action is a `select` (always a valid tool name) and the tool input is constrained by a
regex (always a parseable arithmetic expression), so the loop never breaks on malformed model
output. The program branches on generated values, so it runs in the interpreter (not traced).
"""

import ast
import operator

import lmlang as ll

MAX_STEPS = 3
NUMBER = r"(0|[1-9][0-9]{0,3})"
EXPRESSION = rf"{NUMBER}( ?[-+*/] ?{NUMBER}){{1,3}}"  # e.g. "12 * 7 + 3"
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def calculator(expression: str) -> str:
    """Evaluates + - * / over numbers (no eval: only these operations are allowed)."""

    def value(node: ast.AST) -> float:
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](value(node.left), value(node.right))
        raise ValueError(f"unsupported expression: {expression!r}")

    try:
        return f"{value(ast.parse(expression, mode='eval').body):g}"
    except ZeroDivisionError:
        return "error: division by zero"


TOOLS = {"calculator": calculator}


@ll.function
def react(s, question: str):
    s += ll.system("Answer the question. Each step: a Thought, then an Action: 'calculator' with an "
                   "arithmetic Input, or 'finish' with the final answer as Input.")
    s += ll.user(question)
    for step in range(MAX_STEPS):
        with s.assistant():
            s += "Thought: "
            s += ll.gen(f"thought_{step}", max_tokens=24, stop="\n")
            s += "\nAction: "
            s += ll.select(f"action_{step}", choices=["calculator", "finish"])
            s += "\nInput: "
            if s[f"action_{step}"] == "finish" or step == MAX_STEPS - 1:
                s += ll.gen("answer", max_tokens=16, stop="\n")
                return
            s += ll.gen(f"input_{step}", max_tokens=16, regex=EXPRESSION)
        s += ll.user("Observation: " + TOOLS["calculator"](s[f"input_{step}"]))


if __name__ == "__main__":
    state = react.run(question="A box holds 12 eggs. How many eggs are in 7 boxes plus 5 loose eggs?",
                      temperature=0)
    for message in state.messages()[2:]:
        print(f"--- {message['role']}\n{message['content']}")
    print("\nfinal answer:", repr(state["answer"]))
