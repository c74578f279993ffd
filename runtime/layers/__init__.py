"""Building blocks shared by the models: linear, norms, rotary, activations, attention, logits."""
