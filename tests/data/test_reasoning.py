import itertools
import json
import random
from fractions import Fraction

import pytest

from cogrpo.data.geneval import BUILTIN_DIR
from cogrpo.data.jsonl import MAX_LINE
from cogrpo.data.reasoning import (ALPHABET, BUILTIN_TASKS, MAX_COMPLETION, MAX_PROMPT, TASK_KINDS, arith_value,
                                   builtin_tasks, evaluate_expression, final_answer, is_correct, is_heldout,
                                   read_tasks, reference_completion, sample_tasks, validate_task, well_formed)
from cogrpo.proto.errors import InputError

# two valid 4x4 grids agreeing on 12 cells: the puzzle keeping those cells has (at least) both as solutions
SOLUTION_A, SOLUTION_B = "1234341221434321", "1234341223414123"
AMBIGUOUS = "1234341220404020"


def shidoku(grid: str) -> bool:
    """Independent check of a filled 4x4 grid: rows, columns and 2x2 boxes each hold 1-4."""
    rows = [grid[4 * r:4 * r + 4] for r in range(4)]
    cols = ["".join(row[c] for row in rows) for c in range(4)]
    boxes = ["".join(rows[r][c] for r in (br, br + 1) for c in (bc, bc + 1)) for br in (0, 2) for bc in (0, 2)]
    return all(sorted(group) == list("1234") for group in rows + cols + boxes)


ALL_GRIDS = ["".join(rows) for rows in itertools.product(("".join(p) for p in itertools.permutations("1234")),
                                                            repeat=4) if shidoku("".join(rows))]


def task_file(tmp_path, text: str | bytes):
    path = tmp_path / "tasks.jsonl"
    (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
    return path


GOOD = json.dumps({"task": "arith", "prompt": "347+58=", "answer": "405"})


# ---- generators and splits ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("split", ["train", "heldout"])
def test_sampled_tasks_take_kinds_in_turn_stay_in_their_split_and_validate(split):
    tasks = sample_tasks(random.Random(0), 90, split)
    assert [t["task"] for t in tasks] == list(TASK_KINDS) * 30
    assert all(is_heldout(t["prompt"]) == (split == "heldout") for t in tasks)
    for t in tasks:
        assert validate_task(t, "here") == t
        assert len(t["prompt"]) <= MAX_PROMPT and set(t["prompt"]) <= set(ALPHABET)


def test_sampling_is_deterministic_per_seed():
    assert sample_tasks(random.Random(5), 30, "train") == sample_tasks(random.Random(5), 30, "train")
    assert sample_tasks(random.Random(5), 30, "train") != sample_tasks(random.Random(6), 30, "train")


def test_generated_tasks_respect_their_stated_ranges():
    for t in sample_tasks(random.Random(1), 600, "train"):
        if t["task"] == "arith":
            a, op, b = next((t["prompt"][:-1].partition(op)) for op in "+-*" if op in t["prompt"])
            if op == "*":
                assert 10 <= int(a) <= 99 and 2 <= int(b) <= 9
            else:
                assert 999 >= int(a) >= int(b) >= 0
        elif t["task"] == "sudoku":
            assert 8 <= t["prompt"].count("0") <= 12 and shidoku(t["answer"])
        else:
            numbers, target = t["prompt"].split("->")
            assert len(numbers.split(",")) in (3, 4) and 10 <= int(target) <= 999
            assert int(target) not in [int(n) for n in numbers.split(",")]


@pytest.mark.parametrize("name", sorted(BUILTIN_TASKS))
def test_shipped_task_files_are_builtin_tasks_line_by_line(name):
    lines = (BUILTIN_DIR / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()
    expected = builtin_tasks(name)
    assert len(lines) == len(expected) == BUILTIN_TASKS[name][1]
    assert [json.loads(line) for line in lines] == expected
    assert read_tasks(BUILTIN_DIR / f"{name}.jsonl") == expected  # every shipped answer verifies
    arith = [t for t in expected if t["task"] == "arith"]  # read_tasks takes an arith answer on trust: check it
    assert arith and all(t["answer"] == str(evaluate_expression(t["prompt"][:-1])[0]) for t in arith)


def test_shipped_splits_are_disjoint_by_prompt():
    train = {t["prompt"] for t in builtin_tasks("reasoning_train")}
    heldout = {t["prompt"] for t in builtin_tasks("reasoning_heldout")}
    assert not train & heldout
    assert not any(map(is_heldout, train)) and all(map(is_heldout, heldout))
    assert {t["task"] for t in builtin_tasks("reasoning_heldout")} == set(TASK_KINDS)


# ---- verifiers ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("completion, answer", [
    ("#405", "405"), ("347+58 #  405 ", "405"), ("a#b#c", "c"), ("#", ""), ("405", None), ("", None)])
def test_final_answer_is_what_follows_the_last_marker(completion, answer):
    assert final_answer(completion) == answer


ARITH = {"task": "arith", "prompt": "347+58=", "answer": "405"}
NEGATIVE = {"task": "arith", "prompt": "58-347=", "answer": "-289"}


@pytest.mark.parametrize("task, answer, ok", [
    (ARITH, "405", True), (ARITH, "0405", False), (ARITH, "405.0", False), (ARITH, "404", False),
    (ARITH, "400+5", False), (ARITH, "", False), (ARITH, None, False), (NEGATIVE, "-289", True),
    (NEGATIVE, "289", False)])
def test_arith_counts_only_the_exact_integer(task, answer, ok):
    assert is_correct(task, answer) is ok


def test_sudoku_accepts_any_valid_completion_keeping_the_givens():
    assert len(ALL_GRIDS) == 288  # the number of 4x4 Sudoku grids
    task = {"task": "sudoku", "prompt": AMBIGUOUS, "answer": SOLUTION_A}
    assert SOLUTION_A != SOLUTION_B and is_correct(task, SOLUTION_A) and is_correct(task, SOLUTION_B)
    keeps = [g for g in ALL_GRIDS if all(p in ("0", a) for p, a in zip(AMBIGUOUS, g))]
    assert [g for g in ALL_GRIDS if is_correct(task, g)] == keeps and len(keeps) >= 2
    empty = {"task": "sudoku", "prompt": "0" * 16, "answer": SOLUTION_A}
    assert all(is_correct(empty, g) for g in ALL_GRIDS)


def _swap(grid: str, i: int, j: int) -> str:
    cells = list(grid)
    cells[i], cells[j] = cells[j], cells[i]
    return "".join(cells)


@pytest.mark.parametrize("answer", [
    _swap(SOLUTION_A, 0, 1),  # a row still complete, but two columns broken
    "1234" "2341" "3412" "4123",  # rows and columns Latin, boxes broken
    "1234" "3412" "2143" "4312",  # one column repeated
    SOLUTION_A[:15] + "5", SOLUTION_A[:15] + "0", SOLUTION_A[:15], SOLUTION_A + "1", SOLUTION_A.replace("1", " "),
    "", "１234341221434321"])
def test_sudoku_refuses_a_broken_grid(answer):
    assert not is_correct({"task": "sudoku", "prompt": "0" * 16, "answer": SOLUTION_A}, answer)


def test_sudoku_refuses_a_valid_grid_that_changes_a_given():
    other = next(g for g in ALL_GRIDS if g[0] != SOLUTION_A[0])
    puzzle = SOLUTION_A[0] + "0" * 15
    assert shidoku(other) and not is_correct({"task": "sudoku", "prompt": puzzle, "answer": SOLUTION_A}, other)


COUNTDOWN = {"task": "countdown", "prompt": "3,7,25->46", "answer": "25+3*7"}


@pytest.mark.parametrize("answer", ["25+3*7", "3*7+25", "(7*3)+25", " 25 + 7 * 3 ", "((25))+(3*(7))", "7*3+25"])
def test_countdown_accepts_any_expression_using_each_number_once(answer):
    assert is_correct(COUNTDOWN, answer)


@pytest.mark.parametrize("answer", [
    "25+21", "25+3*7+0", "25+3+7", "(25+3)*7", "25+3*7*1", "25+3*7-3+3", "3*7+25+25-25", "46",
    "3/0+25*7", "25/(7-7)+3", "abc", "25+3*7)", "(25+3*7", "25+*3*7", "-25+3*7", "25.0+3*7", "", "25+3×7",
    "+".join(["0"] * 40), "(" * 40 + "25" + ")" * 40 + "+3*7", "25+3*7=46"])
def test_countdown_refuses_wrong_numbers_values_and_garbage_without_raising(answer):
    assert is_correct(COUNTDOWN, answer) is False


@pytest.mark.parametrize("text, value, numbers", [
    ("2+3*4", 14, [2, 3, 4]), ("(2+3)*4", 20, [2, 3, 4]), ("2*3+4", 10, [2, 3, 4]), ("10-4-3", 3, [10, 4, 3]),
    ("10-(4-3)", 9, [10, 4, 3]), ("8/4/2", 1, [8, 4, 2]), ("8/(4/2)", 4, [8, 4, 2]), ("1/3", Fraction(1, 3), [1, 3]),
    ("1/3+1/3+1/3", 1, [1, 3, 1, 3, 1, 3]), ("7/2*2", 7, [7, 2, 2]), ("2-5", -3, [2, 5]), ("9999", 9999, [9999])])
def test_evaluate_expression_uses_precedence_parentheses_and_exact_fractions(text, value, numbers):
    got, used = evaluate_expression(text)
    assert isinstance(got, Fraction) and got == value and used == numbers


@pytest.mark.parametrize("text", ["", "1/0", "2/(3-3)", "(1", "1)", "1+", "*1", "12345", "1 2", "a", "1+" * 40 + "1",
                                  "(" * 2000 + "1" + ")" * 2000, "--1", "1e3"])
def test_evaluate_expression_refuses_what_does_not_parse(text):
    assert evaluate_expression(text) is None


@pytest.mark.parametrize("task, completion, ok", [
    (ARITH, "#405", True), (ARITH, "#404", True), (NEGATIVE, "#-289", True), (ARITH, "405", False),
    (ARITH, "347+58=#405", True), (ARITH, "7851450130400000#405", True),
    (ARITH, "78#514#405", False), (ARITH, "#4#05", False), (ARITH, "#", False), (ARITH, "#40 5", False),
    (ARITH, "#405 ", True), ({"task": "sudoku", "prompt": AMBIGUOUS, "answer": SOLUTION_A}, "#" + SOLUTION_B, True),
    ({"task": "sudoku", "prompt": AMBIGUOUS, "answer": SOLUTION_A}, "#" + SOLUTION_A[:15] + "0", False),
    (COUNTDOWN, "#(25+3)*7", True), (COUNTDOWN, "#25+3*7=46", False), (COUNTDOWN, "#25 + 21", False)])
def test_well_formed_means_one_marker_then_the_tasks_characters(task, completion, ok):
    assert well_formed(task, completion) is ok


# ---- reference completions --------------------------------------------------------------------------------------

@pytest.mark.parametrize("prompt, completion", [
    ("347+58=", "7851" "4501" "3040" "0000" "#405"),  # columns: operand digits, result digit, carry
    ("999+999=", "9981" "9991" "9991" "0010" "#1998"),
    ("612-75=", "2571" "1731" "6050" "#537"),  # a borrow is the carry of a subtraction
    ("105-99=", "5961" "0901" "1000" "#6"),
    ("47*8=", "765" "473" "030" "#376"),  # a product: the first operand's digit, result digit, carry
    ("0+0=", "0000" "0000" "#0"),
])
def test_arith_reference_completions_write_the_columns_by_hand(prompt, completion):
    assert reference_completion({"task": "arith", "prompt": prompt, "answer": arith_value(prompt)}) == completion


def test_reference_completions_fit_end_with_the_answer_and_verify():
    for task in builtin_tasks("reasoning_train"):
        completion = reference_completion(task)
        assert len(completion) <= MAX_COMPLETION and set(completion) <= set(ALPHABET)
        assert final_answer(completion) == task["answer"] and is_correct(task, final_answer(completion))
        assert well_formed(task, completion)
        if task["task"] == "countdown":  # the scratchpad: the values of every operation but the last, in order
            partials = completion.split("#")[0]
            assert len(partials.split(",")) == len(task["prompt"].split("->")[0].split(",")) - 2
    assert reference_completion({"task": "countdown", "prompt": "3,7,25->46", "answer": "3*7+25"}) == "21#3*7+25"
    four = {"task": "countdown", "prompt": "2,3,4,5->45", "answer": "(2+3+4)*5"}
    assert reference_completion(four) == "5,9#(2+3+4)*5"
    assert reference_completion({"task": "sudoku", "prompt": AMBIGUOUS, "answer": SOLUTION_A}) == "#" + SOLUTION_A


# ---- task files --------------------------------------------------------------------------------------------------

def test_a_good_file_reads_back_with_blank_lines_skipped(tmp_path):
    tasks = sample_tasks(random.Random(3), 9, "train")
    path = task_file(tmp_path, "\n" + "\n\n".join(json.dumps(t) for t in tasks) + "\n  \n")
    assert read_tasks(path) == tasks


def _line(**fields) -> str:
    return json.dumps({"task": "arith", "prompt": "347+58=", "answer": "405", **fields})


def _without(key: str) -> str:
    record = json.loads(GOOD)
    del record[key]
    return json.dumps(record)


BAD_LINES = {
    "bad json": ("{\"task\": \"arith\",", "malformed JSON"),
    "not an object": ("[1, 2, 3]", "exactly the keys"),
    "a string": ("\"347+58=\"", "exactly the keys"),
    "missing key": (_without("answer"), "exactly the keys"),
    "extra key": (_line(note="x"), "exactly the keys"),
    "unknown task": (_line(task="chess"), "unknown task 'chess'"),
    "unhashable task": (_line(task=["arith"]), "unknown task"),
    "long unknown task": (_line(task="x" * 5000), "unknown task .x{60}\\.\\.\\."),
    "task name too long": (_line(task="y" * 1000), "unknown task"),
    "prompt not a string": (_line(prompt=347), "must be strings"),
    "answer not a string": (_line(answer=405), "must be strings"),
    "prompt not in format": (_line(prompt="347 + 58 ="), "not a arith prompt"),
    "arith with letters": (_line(prompt="three+58="), "not a arith prompt"),
    "four-digit operand": (_line(prompt="1000+5=", answer="1005"), "not a arith prompt"),
    "product too wide": (_line(prompt="123*4=", answer="492"), "two digits times one"),
    "sudoku too short": (_line(task="sudoku", prompt="123", answer="123"), "not a sudoku prompt"),
    "sudoku digit 5": (_line(task="sudoku", prompt="5" + "0" * 15, answer=SOLUTION_A), "not a sudoku prompt"),
    "sudoku wrong answer": (_line(task="sudoku", prompt=AMBIGUOUS, answer=_swap(SOLUTION_A, 0, 1)),
                            "does not solve"),
    "countdown arrow missing": (_line(task="countdown", prompt="3,7,25=46", answer="25+3*7"),
                                "not a countdown prompt"),
    "countdown two numbers": (_line(task="countdown", prompt="3,7->21", answer="3*7"), "not a countdown prompt"),
    "countdown wrong answer": (_line(task="countdown", prompt="3,7,25->46", answer="25+3+7"), "does not solve"),
    "countdown garbage answer": (_line(task="countdown", prompt="3,7,25->46", answer="(" * 3000), "does not solve"),
    "null prompt": (_line(prompt=None), "must be strings"),
    "200,000 brackets": ("[" * 200_000, f"at most {MAX_LINE:,} characters"),
    "4,000 brackets": ("[" * 4000, "malformed JSON"),
    "4,000 nested objects": ("{\"a\":" * 600 + "1" + "}" * 600, "exactly the keys|malformed JSON"),
    "long prompt": (_line(prompt="1" * 3000 + "+1="), "not a arith prompt"),
}


BAD_LINES["arith wrong answer"] = (_line(answer="404"), "does not solve")


@pytest.mark.parametrize("line, message", BAD_LINES.values(), ids=BAD_LINES.keys())
def test_a_bad_line_is_one_short_input_error_naming_path_and_line(tmp_path, line, message):
    path = task_file(tmp_path, f"{GOOD}\n\n{line}\n{GOOD}\n")
    with pytest.raises(InputError, match=message) as info:
        read_tasks(path)
    text = str(info.value)
    assert text.startswith(f"{path}:3: ") and "\n" not in text and len(text) < 300


@pytest.mark.parametrize("content, message", [
    (b"", "empty"), (b"\n  \n\n", "empty"), (GOOD.encode() + b"\n\xff\xfe\n", "not UTF-8"),
    (b"\x80" * 10, "not UTF-8")])
def test_empty_and_non_utf8_files_are_input_errors_naming_the_path(tmp_path, content, message):
    path = task_file(tmp_path, content)
    with pytest.raises(InputError, match=message) as info:
        read_tasks(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_a_missing_file_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_tasks(tmp_path / "nope.jsonl")
    with pytest.raises(InputError, match="not found"):
        read_tasks(tmp_path)  # a directory


def test_line_numbers_count_newlines_only(tmp_path):
    path = task_file(tmp_path, GOOD + "\x0c" + GOOD + "\nnot json\n")
    with pytest.raises(InputError, match=f"^{path}:1: "):
        read_tasks(path)  # line 1 holds two JSON objects: it is malformed
