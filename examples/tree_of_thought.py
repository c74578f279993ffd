"""Tree of thought with `fork`: several lines of reasoning from one shared prefix, then a vote.

    lmlang run examples/tree_of_thought.py --model PATH
    lmlang trace examples/tree_of_thought.py:tree_of_thought

Each branch continues from the same prompt; the runtime computes that prefix once and decodes
the branches together in one batch. `join()` gathers the branches' variables as lists.
"""

import lmlang as ll

NUM_BRANCHES = 3


@ll.function
def tree_of_thought(s, problem: str):
    s += ll.system("You solve problems step by step.")
    s += ll.user(problem + "\nPropose an approach in one sentence.")
    with s.assistant():
        forks = s.fork(NUM_BRANCHES)
        forks += lambda i: f"Approach {i + 1}: "
        forks += ll.gen("approach", max_tokens=24, stop="\n")
        forks += "\nIs this approach sound? "
        forks += ll.select("verdict", choices=["yes", "no"])
        forks.join()


if __name__ == "__main__":
    state = tree_of_thought.run(problem="How can three people share 7 apples fairly?", temperature=0.8)
    for i, (approach, verdict) in enumerate(zip(state["approach"], state["verdict"])):
        print(f"branch {i}: verdict={verdict:<3} approach={approach!r}")
    sound = [a for a, v in zip(state["approach"], state["verdict"]) if v == "yes"]
    print(f"{len(sound)} of {NUM_BRANCHES} approaches judged sound")
