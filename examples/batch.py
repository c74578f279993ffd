"""Batch processing: run one program over many inputs concurrently, with a progress bar.

    lmlang run examples/batch.py --model PATH -- --limit 8

`run_batch` submits the programs together, so the runtime batches their generations and the
shared instructions are computed once and reused from the prefix cache.
"""

import argparse
from collections import Counter

import lmlang as ll

REVIEWS = [
    "Arrived quickly and works perfectly.",
    "Broke after two days. Very disappointed.",
    "It's okay, nothing special.",
    "Best purchase I've made this year!",
    "The manual is confusing but the product is fine.",
    "Stopped charging within a week.",
    "Exactly as described.",
    "Too expensive for what it does.",
    "My kids love it.",
    "Would not recommend.",
    "Decent value.",
    "Customer support never answered.",
]


@ll.function
def review_summary(s, review: str):
    s += ll.system("You label product reviews and summarise them in a few words.")
    s += ll.user("Review: " + review + "\nSentiment?")
    s += ll.assistant(ll.select("sentiment", choices=["positive", "neutral", "negative"]))
    s += ll.user("Summarise the review in at most five words.")
    s += ll.assistant(ll.gen("summary", max_tokens=12, stop="\n"))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=len(REVIEWS), help="how many reviews to process")
    args = parser.parse_args()
    inputs = [{"review": r} for r in REVIEWS[: args.limit]]
    states = review_summary.run_batch(inputs, progress_bar=True, temperature=0)
    for item, state in zip(inputs, states):
        print(f"{state['sentiment']:>8}  {item['review']}")
    print(Counter(state["sentiment"] for state in states))
