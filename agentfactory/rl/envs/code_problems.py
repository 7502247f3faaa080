"""CodeEnv's built-in problems: small Python functions, each with a reference and hidden tests.

Each problem is a frozen record: the function name and signature the policy must implement, a
description, a reference solution, and hidden tests (one `assert` statement each). `CodeEnv.validate`
runs every reference against its tests in the sandbox (all must pass).
"""

from __future__ import annotations

from pydantic import ConfigDict, Field

from agentfactory.config import StrictModel


class CodeProblem(StrictModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z_][a-z0-9_]*$")
    signature: str
    description: str
    reference: str
    tests: list[str] = Field(min_length=1)


def _p(name: str, signature: str, description: str, reference: str, *tests: str) -> CodeProblem:
    return CodeProblem(
        name=name, signature=signature, description=description, reference=reference, tests=list(tests)
    )


PROBLEMS: tuple[CodeProblem, ...] = (
    _p("add_digits", "def add_digits(n: int) -> int", "Return the sum of the decimal digits of a non-negative integer n.",
       "def add_digits(n):\n    return sum(int(c) for c in str(n))\n",
       "assert add_digits(0) == 0", "assert add_digits(7) == 7", "assert add_digits(1234) == 10", "assert add_digits(99999) == 45"),
    _p("is_palindrome", "def is_palindrome(s: str) -> bool",
       "Return True if s reads the same forwards and backwards, ignoring case and non-alphanumeric characters.",
       "def is_palindrome(s):\n    t = [c.lower() for c in s if c.isalnum()]\n    return t == t[::-1]\n",
       "assert is_palindrome('A man, a plan, a canal: Panama')", "assert not is_palindrome('hello')",
       "assert is_palindrome('')", "assert is_palindrome('No lemon, no melon')"),
    _p("fizzbuzz", "def fizzbuzz(n: int) -> list[str]",
       "Return the strings for 1..n: 'Fizz' for multiples of 3, 'Buzz' for multiples of 5, 'FizzBuzz' for both, else the number.",
       "def fizzbuzz(n):\n    out = []\n    for i in range(1, n + 1):\n        s = ('Fizz' if i % 3 == 0 else '') + ('Buzz' if i % 5 == 0 else '')\n        out.append(s or str(i))\n    return out\n",
       "assert fizzbuzz(1) == ['1']", "assert fizzbuzz(5) == ['1', '2', 'Fizz', '4', 'Buzz']",
       "assert fizzbuzz(15)[-1] == 'FizzBuzz'", "assert fizzbuzz(0) == []"),
    _p("gcd", "def gcd(a: int, b: int) -> int", "Return the greatest common divisor of two non-negative integers (gcd(0, 0) == 0).",
       "def gcd(a, b):\n    while b:\n        a, b = b, a % b\n    return a\n",
       "assert gcd(12, 18) == 6", "assert gcd(7, 13) == 1", "assert gcd(0, 5) == 5", "assert gcd(0, 0) == 0"),
    _p("running_sum", "def running_sum(xs: list[int]) -> list[int]", "Return the list of prefix sums of xs.",
       "def running_sum(xs):\n    out, t = [], 0\n    for x in xs:\n        t += x\n        out.append(t)\n    return out\n",
       "assert running_sum([]) == []", "assert running_sum([1, 2, 3]) == [1, 3, 6]", "assert running_sum([5, -5, 2]) == [5, 0, 2]"),
    _p("count_vowels", "def count_vowels(s: str) -> int", "Count the vowels (a, e, i, o, u, either case) in s.",
       "def count_vowels(s):\n    return sum(c in 'aeiouAEIOU' for c in s)\n",
       "assert count_vowels('') == 0", "assert count_vowels('Hello World') == 3", "assert count_vowels('AEIOUxyz') == 5"),
    _p("fib", "def fib(n: int) -> int", "Return the n-th Fibonacci number, with fib(0) == 0 and fib(1) == 1.",
       "def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n",
       "assert fib(0) == 0", "assert fib(1) == 1", "assert fib(10) == 55", "assert fib(90) == 2880067194370816120"),
    _p("flatten", "def flatten(xs: list) -> list", "Flatten arbitrarily nested lists into one list, keeping order.",
       "def flatten(xs):\n    out = []\n    for x in xs:\n        out.extend(flatten(x) if isinstance(x, list) else [x])\n    return out\n",
       "assert flatten([]) == []", "assert flatten([1, [2, [3, [4]]], 5]) == [1, 2, 3, 4, 5]", "assert flatten([[], [[]]]) == []"),
    _p("reverse_words", "def reverse_words(s: str) -> str",
       "Return the words of s in reverse order, separated by single spaces.",
       "def reverse_words(s):\n    return ' '.join(reversed(s.split()))\n",
       "assert reverse_words('hello world') == 'world hello'", "assert reverse_words('  a  b c ') == 'c b a'", "assert reverse_words('') == ''"),
    _p("second_largest", "def second_largest(xs: list[int]) -> int | None",
       "Return the second largest distinct value in xs, or None if there is none.",
       "def second_largest(xs):\n    v = sorted(set(xs))\n    return v[-2] if len(v) > 1 else None\n",
       "assert second_largest([3, 1, 2]) == 2", "assert second_largest([5, 5, 5]) is None",
       "assert second_largest([]) is None", "assert second_largest([-1, -7, -1]) == -7"),
    _p("rle", "def rle(s: str) -> str", "Run-length encode s: each run of a character becomes the character and the run length, e.g. 'aaab' -> 'a3b1'.",
       "def rle(s):\n    out, i = [], 0\n    while i < len(s):\n        j = i\n        while j < len(s) and s[j] == s[i]:\n            j += 1\n        out.append(f'{s[i]}{j - i}')\n        i = j\n    return ''.join(out)\n",
       "assert rle('') == ''", "assert rle('aaab') == 'a3b1'", "assert rle('abc') == 'a1b1c1'", "assert rle('zzzzzzzzzzzz') == 'z12'"),
    _p("is_prime", "def is_prime(n: int) -> bool", "Return True if n is a prime number.",
       "def is_prime(n):\n    if n < 2:\n        return False\n    i = 2\n    while i * i <= n:\n        if n % i == 0:\n            return False\n        i += 1\n    return True\n",
       "assert not is_prime(1)", "assert is_prime(2)", "assert is_prime(97)", "assert not is_prime(91)", "assert not is_prime(-7)"),
    _p("merge_sorted", "def merge_sorted(a: list[int], b: list[int]) -> list[int]", "Merge two sorted lists into one sorted list.",
       "def merge_sorted(a, b):\n    return sorted(a + b)\n",
       "assert merge_sorted([], []) == []", "assert merge_sorted([1, 4], [2, 3, 5]) == [1, 2, 3, 4, 5]", "assert merge_sorted([1, 1], [1]) == [1, 1, 1]"),
    _p("word_count", "def word_count(s: str) -> dict[str, int]", "Count the lower-cased whitespace-separated words of s.",
       "def word_count(s):\n    out = {}\n    for w in s.lower().split():\n        out[w] = out.get(w, 0) + 1\n    return out\n",
       "assert word_count('') == {}", "assert word_count('a A b') == {'a': 2, 'b': 1}", "assert word_count('x  y x') == {'x': 2, 'y': 1}"),
    _p("rotate", "def rotate(xs: list, k: int) -> list", "Rotate xs right by k positions (k may exceed len(xs) or be negative).",
       "def rotate(xs, k):\n    if not xs:\n        return []\n    k %= len(xs)\n    return xs[-k:] + xs[:-k] if k else list(xs)\n",
       "assert rotate([1, 2, 3], 1) == [3, 1, 2]", "assert rotate([1, 2, 3], 4) == [3, 1, 2]",
       "assert rotate([1, 2, 3], -1) == [2, 3, 1]", "assert rotate([], 3) == []"),
    _p("balanced", "def balanced(s: str) -> bool", "Return True if the brackets ()[]{} in s are balanced (other characters are ignored).",
       "def balanced(s):\n    pairs, stack = {')': '(', ']': '[', '}': '{'}, []\n    for c in s:\n        if c in '([{':\n            stack.append(c)\n        elif c in pairs:\n            if not stack or stack.pop() != pairs[c]:\n                return False\n    return not stack\n",
       "assert balanced('')", "assert balanced('([]{x})')", "assert not balanced('(]')", "assert not balanced('((')"),
)  # fmt: skip
