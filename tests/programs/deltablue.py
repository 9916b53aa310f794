"""DeltaBlue: the incremental constraint solver benchmark, in steps.

Port of the DeltaBlue benchmark (Maloney & Wolczko; V8 / pyperformance
versions) to the event-driven model.  For each problem size the chain test
(equality chain with a stay at one end and an edit at the other) and the
projection test (scale/offset constraints between two sets of variables) run
as a sequence of small steps: building the variables a slice at a time,
extracting the plan, executing the plan a few times per callback, then each
`change` of the projection test in its own callback.
Migration features: class-level attributes holding instances of the class
itself (the Strength table, plus a dict table keyed by int), class attributes
mutated at run time (Constraint.created), a list subclass (OrderedCollection),
a global Planner replaced between tests, Plan objects kept between callbacks,
deep object graphs with many cycles (variables <-> constraints), super().
"""


class OrderedCollection(list):
    pass


class Strength:
    REQUIRED = None
    STRONG_PREFERRED = None
    PREFERRED = None
    STRONG_DEFAULT = None
    NORMAL = None
    WEAK_DEFAULT = None
    WEAKEST = None
    table = {}

    def __init__(self, strength, name):
        self.strength = strength
        self.name = name
        Strength.table[strength] = self

    @classmethod
    def stronger(cls, s1, s2):
        return s1.strength < s2.strength

    @classmethod
    def weaker(cls, s1, s2):
        return s1.strength > s2.strength

    @classmethod
    def weakest_of(cls, s1, s2):
        return s1 if cls.weaker(s1, s2) else s2

    def next_weaker(self):
        # (sic) 5 -> REQUIRED, as in the original benchmark
        return {0: Strength.WEAKEST, 1: Strength.WEAK_DEFAULT, 2: Strength.NORMAL,
                3: Strength.STRONG_DEFAULT, 4: Strength.PREFERRED,
                5: Strength.REQUIRED}[self.strength]

    def __repr__(self):
        return f"Strength({self.name})"


Strength.REQUIRED = Strength(0, "required")
Strength.STRONG_PREFERRED = Strength(1, "strongPreferred")
Strength.PREFERRED = Strength(2, "preferred")
Strength.STRONG_DEFAULT = Strength(3, "strongDefault")
Strength.NORMAL = Strength(4, "normal")
Strength.WEAK_DEFAULT = Strength(5, "weakDefault")
Strength.WEAKEST = Strength(6, "weakest")


class Direction:
    NONE = 0
    FORWARD = 1
    BACKWARD = -1


class Constraint:
    created = 0
    complaints = []

    def __init__(self, strength):
        self.strength = strength
        Constraint.created += 1

    def add_constraint(self):
        self.add_to_graph()
        planner.incremental_add(self)

    def satisfy(self, mark):
        self.choose_method(mark)
        if not self.is_satisfied():
            if self.strength == Strength.REQUIRED:
                Constraint.complaints.append("Could not satisfy a required constraint!")
            return None
        self.mark_inputs(mark)
        out = self.output()
        overridden = out.determined_by
        if overridden is not None:
            overridden.mark_unsatisfied()
        out.determined_by = self
        if not planner.add_propagate(self, mark):
            Constraint.complaints.append("Cycle encountered")
        out.mark = mark
        return overridden

    def destroy_constraint(self):
        if self.is_satisfied():
            planner.incremental_remove(self)
        else:
            self.remove_from_graph()

    def is_input(self):
        return False


class UnaryConstraint(Constraint):
    def __init__(self, v, strength):
        super().__init__(strength)
        self.my_output = v
        self.satisfied = False
        self.add_constraint()

    def add_to_graph(self):
        self.my_output.add_constraint(self)
        self.satisfied = False

    def choose_method(self, mark):
        self.satisfied = (self.my_output.mark != mark
                          and Strength.stronger(self.strength, self.my_output.walk_strength))

    def is_satisfied(self):
        return self.satisfied

    def mark_inputs(self, mark):
        pass

    def output(self):
        return self.my_output

    def recalculate(self):
        self.my_output.walk_strength = self.strength
        self.my_output.stay = not self.is_input()
        if self.my_output.stay:
            self.execute()

    def mark_unsatisfied(self):
        self.satisfied = False

    def inputs_known(self, mark):
        return True

    def remove_from_graph(self):
        if self.my_output is not None:
            self.my_output.remove_constraint(self)
            self.satisfied = False


class StayConstraint(UnaryConstraint):
    def execute(self):
        pass


class EditConstraint(UnaryConstraint):
    def is_input(self):
        return True

    def execute(self):
        pass


class BinaryConstraint(Constraint):
    def __init__(self, v1, v2, strength):
        super().__init__(strength)
        self.v1 = v1
        self.v2 = v2
        self.direction = Direction.NONE
        self.add_constraint()

    def choose_method(self, mark):
        if self.v1.mark == mark:
            if self.v2.mark != mark and Strength.stronger(self.strength, self.v2.walk_strength):
                self.direction = Direction.FORWARD
            else:
                self.direction = Direction.BACKWARD
        if self.v2.mark == mark:
            if self.v1.mark != mark and Strength.stronger(self.strength, self.v1.walk_strength):
                self.direction = Direction.BACKWARD
            else:
                self.direction = Direction.NONE
        if Strength.weaker(self.v1.walk_strength, self.v2.walk_strength):
            if Strength.stronger(self.strength, self.v1.walk_strength):
                self.direction = Direction.BACKWARD
            else:
                self.direction = Direction.NONE
        else:
            if Strength.stronger(self.strength, self.v2.walk_strength):
                self.direction = Direction.FORWARD
            else:
                self.direction = Direction.BACKWARD

    def add_to_graph(self):
        self.v1.add_constraint(self)
        self.v2.add_constraint(self)
        self.direction = Direction.NONE

    def is_satisfied(self):
        return self.direction != Direction.NONE

    def mark_inputs(self, mark):
        self.input().mark = mark

    def input(self):
        return self.v1 if self.direction == Direction.FORWARD else self.v2

    def output(self):
        return self.v2 if self.direction == Direction.FORWARD else self.v1

    def recalculate(self):
        ihn = self.input()
        out = self.output()
        out.walk_strength = Strength.weakest_of(self.strength, ihn.walk_strength)
        out.stay = ihn.stay
        if out.stay:
            self.execute()

    def mark_unsatisfied(self):
        self.direction = Direction.NONE

    def inputs_known(self, mark):
        i = self.input()
        return i.mark == mark or i.stay or i.determined_by is None

    def remove_from_graph(self):
        if self.v1 is not None:
            self.v1.remove_constraint(self)
        if self.v2 is not None:
            self.v2.remove_constraint(self)
        self.direction = Direction.NONE


class ScaleConstraint(BinaryConstraint):
    def __init__(self, src, scale, offset, dest, strength):
        self.direction = Direction.NONE
        self.scale = scale
        self.offset = offset
        super().__init__(src, dest, strength)

    def add_to_graph(self):
        super().add_to_graph()
        self.scale.add_constraint(self)
        self.offset.add_constraint(self)

    def remove_from_graph(self):
        super().remove_from_graph()
        if self.scale is not None:
            self.scale.remove_constraint(self)
        if self.offset is not None:
            self.offset.remove_constraint(self)

    def mark_inputs(self, mark):
        super().mark_inputs(mark)
        self.scale.mark = mark
        self.offset.mark = mark

    def execute(self):
        if self.direction == Direction.FORWARD:
            self.v2.value = self.v1.value * self.scale.value + self.offset.value
        else:
            self.v1.value = (self.v2.value - self.offset.value) / self.scale.value

    def recalculate(self):
        ihn = self.input()
        out = self.output()
        out.walk_strength = Strength.weakest_of(self.strength, ihn.walk_strength)
        out.stay = ihn.stay and self.scale.stay and self.offset.stay
        if out.stay:
            self.execute()


class EqualityConstraint(BinaryConstraint):
    def execute(self):
        self.output().value = self.input().value


class Variable:
    def __init__(self, name, initial_value=0):
        self.name = name
        self.value = initial_value
        self.constraints = OrderedCollection()
        self.determined_by = None
        self.mark = 0
        self.walk_strength = Strength.WEAKEST
        self.stay = True

    def __repr__(self):
        return f"<Variable: {self.name} - {self.value}>"

    def add_constraint(self, constraint):
        self.constraints.append(constraint)

    def remove_constraint(self, constraint):
        self.constraints.remove(constraint)
        if self.determined_by == constraint:
            self.determined_by = None


class Planner:
    def __init__(self):
        self.current_mark = 0

    def incremental_add(self, constraint):
        mark = self.new_mark()
        overridden = constraint.satisfy(mark)
        while overridden is not None:
            overridden = overridden.satisfy(mark)

    def incremental_remove(self, constraint):
        out = constraint.output()
        constraint.mark_unsatisfied()
        constraint.remove_from_graph()
        unsatisfied = self.remove_propagate_from(out)
        strength = Strength.REQUIRED
        repeat = True
        while repeat:
            for u in unsatisfied:
                if u.strength == strength:
                    self.incremental_add(u)
                strength = strength.next_weaker()
            repeat = strength != Strength.WEAKEST

    def new_mark(self):
        self.current_mark += 1
        return self.current_mark

    def make_plan(self, sources):
        mark = self.new_mark()
        plan = Plan()
        todo = sources
        while todo:
            c = todo.pop(0)
            if c.output().mark != mark and c.inputs_known(mark):
                plan.add_constraint(c)
                c.output().mark = mark
                self.add_constraints_consuming_to(c.output(), todo)
        return plan

    def extract_plan_from_constraints(self, constraints):
        sources = OrderedCollection()
        for c in constraints:
            if c.is_input() and c.is_satisfied():
                sources.append(c)
        return self.make_plan(sources)

    def add_propagate(self, c, mark):
        todo = OrderedCollection([c])
        while todo:
            d = todo.pop(0)
            if d.output().mark == mark:
                self.incremental_remove(c)
                return False
            d.recalculate()
            self.add_constraints_consuming_to(d.output(), todo)
        return True

    def remove_propagate_from(self, out):
        out.determined_by = None
        out.walk_strength = Strength.WEAKEST
        out.stay = True
        unsatisfied = OrderedCollection()
        todo = OrderedCollection([out])
        while todo:
            v = todo.pop(0)
            for c in v.constraints:
                if not c.is_satisfied():
                    unsatisfied.append(c)
            determining = v.determined_by
            for c in v.constraints:
                if c != determining and c.is_satisfied():
                    c.recalculate()
                    todo.append(c.output())
        return unsatisfied

    def add_constraints_consuming_to(self, v, coll):
        determining = v.determined_by
        for c in v.constraints:
            if c != determining and c.is_satisfied():
                coll.append(c)


class Plan:
    def __init__(self):
        self.v = OrderedCollection()

    def add_constraint(self, c):
        self.v.append(c)

    def __len__(self):
        return len(self.v)

    def execute(self):
        for c in self.v:
            c.execute()


# ---------------------------------------------------------------- event-driven driver

SIZES = [30, 100]
BUILD_SLICE = 25      # variables created per callback
EXEC_SLICE = 10       # plan executions per callback
planner = None
job = {}              # state of the test in progress
results = []          # one summary tuple per finished test
steps = []            # queue of (function, args) still to run


def run_next():
    if not steps:
        finish()
        return
    fn, args = steps.pop(0)
    fn(*args)
    things.set_timeout(run_next, 0.01)


def chain_build(n, lo):
    global planner
    if lo == 0:
        planner = Planner()
        job.clear()
        job.update(kind="chain", n=n, prev=None, first=None, last=None, failures=0)
    for i in range(lo, min(lo + BUILD_SLICE, n + 1)):
        v = Variable(f"v{i}")
        if job["prev"] is not None:
            EqualityConstraint(job["prev"], v, Strength.REQUIRED)
        if i == 0:
            job["first"] = v
        if i == n:
            job["last"] = v
        job["prev"] = v


def chain_plan():
    StayConstraint(job["last"], Strength.STRONG_DEFAULT)
    edit = EditConstraint(job["first"], Strength.PREFERRED)
    job["plan"] = planner.extract_plan_from_constraints(OrderedCollection([edit]))
    print(f"chain n={job['n']}: plan of {len(job['plan'])} constraints, "
          f"{Constraint.created} constraints created so far")


def chain_execute(lo):
    first, last, plan = job["first"], job["last"], job["plan"]
    for i in range(lo, lo + EXEC_SLICE):
        first.value = i
        plan.execute()
        if last.value != i:
            job["failures"] += 1


def chain_report():
    ok = job["failures"] == 0
    print(f"chain n={job['n']}: last={job['last']!r} failures={job['failures']} "
          f"marks={planner.current_mark} {'ok' if ok else 'FAILED'}")
    results.append(("chain", job["n"], ok))


def projection_build(n, lo):
    global planner
    if lo == 0:
        planner = Planner()
        job.clear()
        job.update(kind="projection", n=n, scale=Variable("scale", 10),
                   offset=Variable("offset", 1000), src=None, dst=None,
                   dests=OrderedCollection(), failures=[])
    for i in range(lo, min(lo + BUILD_SLICE, n)):
        src = Variable(f"src{i}", i)
        dst = Variable(f"dst{i}", i)
        job["dests"].append(dst)
        StayConstraint(src, Strength.NORMAL)
        ScaleConstraint(src, job["scale"], job["offset"], dst, Strength.REQUIRED)
        job["src"], job["dst"] = src, dst


def change(v, new_value):
    edit = EditConstraint(v, Strength.PREFERRED)
    plan = planner.extract_plan_from_constraints(OrderedCollection([edit]))
    for _ in range(10):
        v.value = new_value
        plan.execute()
    edit.destroy_constraint()


def projection_change(which, value, check):
    change(job[which], value)
    n, src, dst, dests = job["n"], job["src"], job["dst"], job["dests"]
    if check == 1 and dst.value != 1170:
        job["failures"].append(1)
    if check == 2 and src.value != 5:
        job["failures"].append(2)
    if check == 3 and any(dests[i].value != i * 5 + 1000 for i in range(n - 1)):
        job["failures"].append(3)
    if check == 4 and any(dests[i].value != i * 5 + 2000 for i in range(n - 1)):
        job["failures"].append(4)
    print(f"projection n={n}: change {which} -> {value}: src={src.value} dst={dst.value} "
          f"sum(dests)={sum(d.value for d in dests)}")


def projection_report():
    ok = not job["failures"]
    print(f"projection n={job['n']}: failures={job['failures']} {'ok' if ok else 'FAILED'}")
    results.append(("projection", job["n"], ok))


def finish():
    good = sum(ok for _, _, ok in results)
    print(f"strength table: {[Strength.table[k].name for k in sorted(Strength.table)]}")
    print(f"complaints: {len(Constraint.complaints)}")
    print(f"result: {good}/{len(results)} deltablue tests ok, "
          f"{Constraint.created} constraints created")


for size in SIZES:
    for lo in range(0, size + 1, BUILD_SLICE):
        steps.append((chain_build, (size, lo)))
    steps.append((chain_plan, ()))
    for lo in range(0, 100, EXEC_SLICE):
        steps.append((chain_execute, (lo,)))
    steps.append((chain_report, ()))
    for lo in range(0, size, BUILD_SLICE):
        steps.append((projection_build, (size, lo)))
    steps.append((projection_change, ("src", 17, 1)))
    steps.append((projection_change, ("dst", 1050, 2)))
    steps.append((projection_change, ("scale", 5, 3)))
    steps.append((projection_change, ("offset", 2000, 4)))
    steps.append((projection_report, ()))

things.set_timeout(run_next, 0.01)
