"""Dice league: players of several kinds roll dice from the module-level random functions.

Exercises snapshot honesty (issue 7): the state of the program's ``random`` module
(random.seed / random / randint / choice / shuffle / uniform / gauss, through
``import random`` and ``from random import ...``, plus a bound function kept in a
global), a player registry filled by ``__init_subclass__`` (run once, never again at
restore), class attributes set by ``__init_subclass__`` from class keywords, zero-argument
``super()`` in a classmethod, a staticmethod and a property, and a Flag combination.
Deterministic (seeded) and ends by itself after ROUNDS rounds.
"""

import enum
import random
from random import choice, randint

random.seed("dice-league")
ROUNDS = 24
draw = random.random  # a bound function of the program's generator, kept in a global


class Trait(enum.Flag):
    LUCKY = 1
    BOLD = 2
    STEADY = 4


class Player:
    kinds = {}  # kind name -> class, filled by __init_subclass__

    def __init_subclass__(cls, dice=1, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.dice = dice
        Player.kinds[cls.__name__.lower()] = cls

    def __init__(self, name):
        self.name = name
        self.points = 0

    @classmethod
    def make(cls, name):
        return cls(name)

    def roll(self):
        return sum(randint(1, 6) for _ in range(self.dice))

    @property
    def score(self):
        return self.points

    @staticmethod
    def describe(kind):
        return f"{kind}"


class Rookie(Player):
    pass


class Veteran(Player, dice=2):
    @classmethod
    def make(cls, name):
        player = super().make(name.upper())
        player.traits = Trait.BOLD | Trait.STEADY
        return player

    @property
    def score(self):
        return super().score + len(self.name)

    @staticmethod
    def describe(kind):
        return "veteran " + super(Veteran, Veteran).describe(kind)


class Wildcard(Veteran, dice=3):
    def roll(self):
        base = super().roll()
        return base + (randint(0, 3) if draw() < 0.5 else -1)


players = [Player.kinds[kind].make(name) for kind, name in
           [("rookie", "ann"), ("veteran", "bob"), ("wildcard", "cyd"), ("rookie", "dee")]]
round_no = 0


def play():
    global round_no
    round_no += 1
    order = players[:]
    random.shuffle(order)
    rolls = []
    for player in order:
        value = player.roll()
        player.points += value
        rolls.append(f"{player.name}={value}")
    bonus = choice(players)
    bonus.points += 1
    weather = random.uniform(-1.0, 1.0) + random.gauss(0.0, 0.5)
    print(f"round {round_no}: {' '.join(rolls)} bonus={bonus.name} weather={weather:.6f}")
    if round_no == ROUNDS:
        things.clear_timer(timer)
        table = sorted(players, key=lambda p: (-p.score, p.name))
        print("kinds:", sorted(Player.kinds), Veteran.describe("x"), players[1].traits.value,
              Trait.BOLD in players[1].traits)
        print("final:", ", ".join(f"{p.name} {p.score}" for p in table))


timer = things.set_interval(play, 0.5)
