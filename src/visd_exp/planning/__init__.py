"""The run planner's parts (`python -m visd_exp.plan`): the model's parameters counted on the meta device
(models.py), the step's shapes from the config (shapes.py), the stated assumptions (assumptions.py), memory
per GPU item by item (memory.py, activations.py), disk and host RAM, and step-time estimates (timing.py)."""
