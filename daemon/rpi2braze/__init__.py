"""rpi2braze: deliver Redpoint Interaction Outbound Delivery exports to Braze."""

__version__ = "0.4.0"
