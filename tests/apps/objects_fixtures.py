"""Replicated classes the app tests share."""

from __future__ import annotations

from framework.apps.objects import ReplicatedObject, query, replicated


class Account(ReplicatedObject):
    """A balance that refuses to go negative: an exception inside a replicated method."""

    app_name = "tests.account"

    balance: int
    history: list[tuple[int, float]]

    def __init__(self) -> None:
        self.balance = 0
        self.history = []

    @replicated
    def deposit(self, amount: int) -> int:
        self.balance += amount
        self.history.append((amount, self.now))
        return self.balance

    @replicated
    def withdraw(self, amount: int) -> int:
        if amount > self.balance:
            raise ValueError(f"balance {self.balance} is less than {amount}")
        self.balance -= amount
        self.history.append((-amount, self.now))
        return self.balance

    @query
    def read(self) -> int:
        return self.balance

    @query(stale=True)
    def read_stale(self) -> int:
        return self.balance
