"""A clock tests move by hand: pass it where code takes `clock=`, then set or add to `now`."""


class FakeClock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now
