"""The reasoning world: three procedurally generated, exactly verifiable tasks for masked diffusion language models,
their training and held-out splits, the task file format and the verifiers.

A task is one JSON object per line, `{"task": ..., "prompt": ..., "answer": ...}`:
- arith: "347+58=", "612-75=" (operands 0-999, the first not smaller) or "47*8=" (two digits times one); the answer
  is the integer, and only it counts.
- sudoku: a 4x4 Sudoku with 2x2 boxes, 16 characters row by row, "0" a blank; any completion that keeps the givens
  and fills every row, column and box with 1-4 counts.
- countdown: "3,7,25->46", three or four numbers and a target; any expression over + - * / and parentheses that uses
  each number exactly once and reaches the target exactly counts.

A completion (the model's output) carries its final answer after the last answer marker `#`: "#405". What precedes
it is a scratchpad the verifiers ignore. The world's reference completions (what a model is pretrained on) write
one: arith its columns least significant first, each the operand digits, the result digit and the carry or
borrow ("347+58=" -> "7851450130400000#405"), countdown the intermediate values of its expression
("3,7,25->46" -> "21#3*7+25"). A prompt belongs to the held-out split when a hash of it says so, so the splits are
disjoint whatever is drawn.

Task files may also hold GSM8K's lines, `{"question": ..., "answer": "... #### 42"}` (task `gsm8k`, for real
language models): a completion's answer is its last `#### N` or `\boxed{N}`, compared as a number.
"""

from __future__ import annotations

import operator
import random
import re
import zlib
from fractions import Fraction
from pathlib import Path

from cogrpo.data.jsonl import read_jsonl
from cogrpo.proto.errors import InputError, clip

TASK_KINDS: tuple[str, ...] = ("arith", "sudoku", "countdown")
ANSWER_MARK = "#"
ALPHABET = "0123456789+-*/=,>()" + ANSWER_MARK  # every character a prompt or a completion of this world uses
MAX_PROMPT = 20  # characters; the longest prompt drawn is 16
MAX_COMPLETION = 24  # characters of a reference completion, scratchpad included
HELDOUT_SHARE = 5  # one prompt in five is held out
OPERATIONS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}
COUNTDOWN_BIG = (25, 50, 75, 100)

_PROMPT_FORMS = {"arith": re.compile(r"(\d{1,3})([+\-*])(\d{1,3})="),
                 "sudoku": re.compile(r"[0-4]{16}"),
                 "countdown": re.compile(r"(\d{1,3}(?:,\d{1,3}){2,3})->(\d{1,4})")}


def is_heldout(prompt: str) -> bool:
    return zlib.crc32(prompt.encode()) % HELDOUT_SHARE == 0


# ---- generators --------------------------------------------------------------------------------------------------

def arith(rng: random.Random) -> dict:
    op = rng.choice("+-*")
    if op == "*":
        a, b = rng.randint(10, 99), rng.randint(2, 9)
    else:
        a, b = sorted((rng.randint(0, 999), rng.randint(0, 999)), reverse=True)
    value = a + b if op == "+" else a - b if op == "-" else a * b
    return {"task": "arith", "prompt": f"{a}{op}{b}=", "answer": str(value)}


def _sudoku_solution(rng: random.Random) -> list[list[int]]:
    """A uniformly shuffled valid 4x4 grid: relabel digits, permute rows within bands, bands, columns within stacks,
    stacks, and maybe transpose."""
    digits = rng.sample(range(1, 5), 4)
    base = [[digits[(r * 2 + r // 2 + c) % 4] for c in range(4)] for r in range(4)]
    rows = [band * 2 + r for band in rng.sample((0, 1), 2) for r in rng.sample((0, 1), 2)]
    cols = [stack * 2 + c for stack in rng.sample((0, 1), 2) for c in rng.sample((0, 1), 2)]
    grid = [[base[r][c] for c in cols] for r in rows]
    return [list(row) for row in zip(*grid)] if rng.random() < 0.5 else grid


def sudoku(rng: random.Random) -> dict:
    solution = "".join(str(d) for row in _sudoku_solution(rng) for d in row)
    blanks = set(rng.sample(range(16), rng.randint(8, 12)))
    puzzle = "".join("0" if i in blanks else ch for i, ch in enumerate(solution))
    return {"task": "sudoku", "prompt": puzzle, "answer": solution}


def _combine(rng: random.Random, terms: list[tuple[Fraction, str, int]]) -> tuple[Fraction, str] | None:
    """Join numbers into one expression by random operations, keeping every intermediate value a positive integer.
    A term is (value, text, precedence: 2 atom or product, 1 sum)."""
    while len(terms) > 1:
        (a, ta, pa), (b, tb, pb) = [terms.pop(rng.randrange(len(terms))) for _ in range(2)]
        op = rng.choice("+-*/")
        if op == "-" and a < b or op == "/" and (b == 0 or a % b):
            (a, ta, pa), (b, tb, pb) = (b, tb, pb), (a, ta, pa)
        if op == "-" and a <= b or op == "/" and (b == 0 or a % b or b == 1):
            return None
        value = OPERATIONS[op](a, b)
        if op in "+-":
            right = f"({tb})" if op == "-" and pb == 1 else tb
            terms.append((value, f"{ta}{op}{right}", 1))
        else:
            left = f"({ta})" if pa == 1 else ta
            right = f"({tb})" if pb == 1 or op == "/" and "*" in tb or op == "/" and "/" in tb else tb
            terms.append((value, f"{left}{op}{right}", 2))
    return terms[0][0], terms[0][1]


def countdown(rng: random.Random) -> dict:
    while True:
        count = rng.choice((3, 4))
        numbers = [rng.choice(COUNTDOWN_BIG) if rng.random() < 0.25 else rng.randint(1, 10) for _ in range(count)]
        made = _combine(rng, [(Fraction(n), str(n), 2) for n in numbers])
        if made is None or not 10 <= made[0] <= 999 or made[0] in numbers:
            continue
        rng.shuffle(numbers)
        task = {"task": "countdown", "prompt": f"{','.join(map(str, numbers))}->{made[0]}", "answer": made[1]}
        if len(reference_completion(task)) <= MAX_COMPLETION:
            return task


GENERATORS = {"arith": arith, "sudoku": sudoku, "countdown": countdown}


def sample_tasks(rng: random.Random, n: int, split: str, kinds: tuple[str, ...] = TASK_KINDS) -> list[dict]:
    """n tasks, kinds in turn, from the `train` or `heldout` split."""
    out = []
    for i in range(n):
        while True:
            task = GENERATORS[kinds[i % len(kinds)]](rng)
            if is_heldout(task["prompt"]) == (split == "heldout"):
                break
        out.append(task)
    return out


# The shipped task files (cogrpo/data/metadata/NAME.jsonl): (split, tasks, seed).
BUILTIN_TASKS = {"reasoning_train": ("train", 3000, 2001), "reasoning_heldout": ("heldout", 300, 2002)}


def builtin_tasks(name: str) -> list[dict]:
    split, n, seed = BUILTIN_TASKS[name]
    return sample_tasks(random.Random(seed), n, split)


def arith_value(prompt: str) -> str:
    """An arith prompt's answer."""
    a, op, b = _PROMPT_FORMS["arith"].fullmatch(prompt).groups()
    return str(int(a) + int(b) if op == "+" else int(a) - int(b) if op == "-" else int(a) * int(b))


def _digit_steps(prompt: str) -> str:
    """An arith prompt's columns, least significant first, the way the sum is done by hand: each column's operand
    digits (a product's one digit of the first operand; the second is in the prompt), then the result digit and
    the carry (or borrow) it passes on. Copying the digits first leaves every result digit a function of the few
    characters just before it."""
    a, op, b = _PROMPT_FORMS["arith"].fullmatch(prompt).groups()
    columns = len(a) if op == "-" else max(len(a), len(b)) + 1
    x, y = a.zfill(columns)[::-1], b.zfill(columns)[::-1]
    steps, carry = [], 0
    for i in range(columns):
        if op == "+":
            total = int(x[i]) + int(y[i]) + carry
            digit, carry = total % 10, total // 10
        elif op == "-":
            total = int(x[i]) - int(y[i]) - carry
            digit, carry = total % 10, int(total < 0)
        else:
            total = int(x[i]) * int(b) + carry
            digit, carry = total % 10, total // 10
        steps.append(f"{x[i]}{digit}{carry}" if op == "*" else f"{x[i]}{y[i]}{digit}{carry}")
    return "".join(steps)


def reference_completion(task: dict) -> str:
    """The completion a model learns from: a scratchpad (arith's column steps, countdown's intermediate values),
    the answer marker and the task's answer."""
    kind, prompt, answer = task["task"], task["prompt"], task["answer"]
    if kind == "arith":
        return _digit_steps(prompt) + ANSWER_MARK + answer
    if kind == "countdown":
        partials = _evaluate(answer)[2][:-1]
        return ",".join(str(v) for v in partials) + ANSWER_MARK + answer
    return ANSWER_MARK + answer


_GSM8K_ANSWER = re.compile(r"####\s*([^\n]*)|\\boxed\{([^{}]*)\}")


def as_number(text: str) -> str | None:
    """A numeric answer in one canonical form ("1,234.50" and "$1234.5" -> "2469/2"-style exact fractions), or None
    when it is not a number."""
    cleaned = text.strip().replace(",", "").replace("$", "").rstrip(".").strip()
    if not re.fullmatch(r"-?\d{1,30}(\.\d{1,30})?", cleaned):
        return None
    return str(Fraction(cleaned))


def gsm8k_answer(completion: str) -> str | None:
    """The last `#### N` or `\\boxed{N}` of a completion, as a canonical number."""
    found = _GSM8K_ANSWER.findall(completion)
    return as_number(found[-1][0] or found[-1][1]) if found else None


def answer_of(task: dict, completion: str) -> str | None:
    """The final answer a completion gives for its task (None: it gives none)."""
    return gsm8k_answer(completion) if task["task"] == "gsm8k" else final_answer(completion)


# ---- verifiers ---------------------------------------------------------------------------------------------------

def final_answer(completion: str) -> str | None:
    """What follows the last answer marker, stripped; None when there is no marker."""
    if ANSWER_MARK not in completion:
        return None
    return completion.rsplit(ANSWER_MARK, 1)[1].strip()


def _sudoku_valid(puzzle: str, answer: str) -> bool:
    if len(answer) != 16 or any(ch not in "1234" for ch in answer):
        return False
    if any(p != "0" and p != a for p, a in zip(puzzle, answer)):
        return False
    cells = [[int(answer[r * 4 + c]) for c in range(4)] for r in range(4)]
    groups = cells + [list(col) for col in zip(*cells)]
    groups += [[cells[r][c] for r in (br, br + 1) for c in (bc, bc + 1)] for br in (0, 2) for bc in (0, 2)]
    return all(sorted(g) == [1, 2, 3, 4] for g in groups)


def evaluate_expression(text: str) -> tuple[Fraction, list[int]] | None:
    """(value, the numbers it uses) of an expression over non-negative integers, + - * / and parentheses; None if
    it does not parse or divides by zero. Exact arithmetic, standard precedence, no Python eval."""
    evaluated = _evaluate(text)
    return None if evaluated is None else evaluated[:2]


def _evaluate(text: str) -> tuple[Fraction, list[int], list[Fraction]] | None:
    """evaluate_expression's parser; also the value of every operation, in the order they are done."""
    tokens = re.findall(r"[0-9]+|[-+*/()]|\S", text)
    pos, numbers, partials = 0, [], []

    def atom() -> Fraction:
        nonlocal pos
        if pos < len(tokens) and tokens[pos] == "(":
            pos += 1
            value = expr()
            if pos >= len(tokens) or tokens[pos] != ")":
                raise ValueError
            pos += 1
            return value
        number = tokens[pos] if pos < len(tokens) else ""
        if number.isdigit() and len(number) <= 4 and (number == "0" or not number.startswith("0")):
            numbers.append(int(tokens[pos]))
            pos += 1
            return Fraction(numbers[-1])
        raise ValueError

    def chain(operand, ops: str) -> Fraction:
        """operand (op operand)*, left to right, over the operators in `ops`."""
        nonlocal pos
        value = operand()
        while pos < len(tokens) and tokens[pos] in ops:
            op, pos = tokens[pos], pos + 1
            value = OPERATIONS[op](value, operand())
            partials.append(value)
        return value

    def term() -> Fraction:
        return chain(atom, "*/")

    def expr() -> Fraction:
        return chain(term, "+-")

    if not tokens or len(tokens) > 64:
        return None
    try:
        value = expr()
    except (ValueError, ZeroDivisionError):
        return None
    return (value, numbers, partials) if pos == len(tokens) else None


def is_correct(task: dict, answer: str | None) -> bool:
    """Whether `answer` (a completion's final answer) solves the task: exactly the integer for arith, any valid
    solution for sudoku and countdown."""
    if answer is None:
        return False
    kind, prompt = task["task"], task["prompt"]
    if kind == "gsm8k":
        return as_number(answer) == task["answer"]
    if kind == "arith":
        return answer == task["answer"]
    if kind == "sudoku":
        return _sudoku_valid(prompt, answer)
    numbers, target = prompt.split("->")
    evaluated = evaluate_expression(answer)
    return (evaluated is not None and evaluated[0] == int(target)
            and sorted(evaluated[1]) == sorted(int(n) for n in numbers.split(",")))


def well_formed(task: dict, completion: str) -> bool:
    """The format reward's test: exactly one answer marker, then an answer in the task's own characters (a GSM8K
    task: a numeric answer it can extract)."""
    if task["task"] == "gsm8k":
        return gsm8k_answer(completion) is not None
    answer = final_answer(completion)
    if answer is None or completion.count(ANSWER_MARK) != 1:
        return False
    allowed = {"arith": "-0123456789", "sudoku": "1234", "countdown": "0123456789+-*/()"}[task["task"]]
    return bool(answer) and all(ch in allowed for ch in answer)


# ---- files -------------------------------------------------------------------------------------------------------

def _gsm8k_task(record: dict, where: str) -> dict:
    question, solution = record["question"], record["answer"]
    if not isinstance(question, str) or not isinstance(solution, str) or not question.strip():
        raise InputError(f"{where}: a GSM8K line's question and answer must be strings")
    answer = as_number(solution.rsplit("####", 1)[1]) if "####" in solution else None
    if answer is None:
        raise InputError(f"{where}: a GSM8K answer ends with '#### N', N a number: {clip(solution)!r}")
    return {"task": "gsm8k", "prompt": question, "answer": answer}


def validate_task(record: object, where: str) -> dict:
    """Check one task line's object (or convert a GSM8K line); raise InputError naming `where` on the first
    problem."""
    if isinstance(record, dict) and {"question", "answer"} <= set(record) and "task" not in record:
        return _gsm8k_task(record, where)
    if isinstance(record, dict) and record.get("task") == "gsm8k" and set(record) == {"task", "prompt", "answer"}:
        return _gsm8k_task({"question": record["prompt"], "answer": f"#### {record['answer']}"}, where)
    if not isinstance(record, dict) or set(record) != {"task", "prompt", "answer"}:
        raise InputError(f"{where}: a task is a JSON object with exactly the keys task, prompt and answer (or a "
                         "GSM8K line: question, answer)")
    kind, prompt, answer = record["task"], record["prompt"], record["answer"]
    if kind not in TASK_KINDS:
        raise InputError(f"{where}: unknown task {clip(str(kind))!r} (tasks: {', '.join(TASK_KINDS)}, gsm8k)")
    if not isinstance(prompt, str) or not isinstance(answer, str):
        raise InputError(f"{where}: prompt and answer must be strings")
    match = _PROMPT_FORMS[kind].fullmatch(prompt)
    if match is None or len(prompt) > MAX_PROMPT:
        raise InputError(f"{where}: {clip(prompt)!r} is not a {kind} prompt (see docs/text.md)")
    if kind == "arith" and match.group(2) == "*" and not (len(match.group(1)) == 2 and len(match.group(3)) == 1):
        raise InputError(f"{where}: arith products are two digits times one: {clip(prompt)!r}")
    if kind == "arith" and answer != arith_value(prompt) or not is_correct(record, answer):
        raise InputError(f"{where}: the answer {clip(answer)!r} does not solve {clip(prompt)!r}")
    return record


def read_tasks(path: str | Path) -> list[dict]:
    """A task JSONL file, every line checked."""
    return [validate_task(record, where) for where, record in read_jsonl(path, "task")]
