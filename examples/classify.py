"""Classification with `select`: the model scores every label, and the answer is always one of them.

    lmlang run examples/classify.py --model PATH

All labels are scored in one engine call over the shared prompt prefix (computed once).
`state.get_meta_info("label")` holds the per-label scores.
"""

import lmlang as ll

LABELS = ["bug", "question", "feature request"]
TICKETS = [
    "The app crashes when I open the settings page.",
    "How do I export my data to CSV?",
    "Please add a dark mode.",
]


@ll.function
def triage(s, ticket: str):
    s += ll.system("You are a support triage assistant. Classify each ticket.")
    s += ll.user("Ticket: " + ticket + "\nIs this a bug, a question or a feature request?")
    s += ll.assistant(ll.select("label", choices=LABELS))


if __name__ == "__main__":
    for ticket in TICKETS:
        state = triage.run(ticket=ticket)
        assert state["label"] in LABELS
        print(f"{state['label']:>15}  <- {ticket}")
    print("scores of the last ticket:", state.get_meta_info("label"))
