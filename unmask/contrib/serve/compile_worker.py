"""Compiles one request's regular expression or JSON Schema in a child process of ``unmask serve``.

Run as ``python -I compile_worker.py`` with the job as JSON on standard input. It caps its own address space
and CPU time first, so a pattern whose automaton explodes (``(a|b)*a(a|b){40}`` has 2**41 states) ends this
process, never the server. It prints the regular expression (a schema's, from outlines-core) and the number
of states of its automaton over single characters, which bounds the states of the automaton over any
vocabulary. It imports nothing of unmask: only the standard library and outlines-core.
"""

import json
import re
import resource
import sys


def main() -> None:
    job = json.load(sys.stdin)
    resource.setrlimit(resource.RLIMIT_AS, (job["memory_bytes"], job["memory_bytes"]))
    resource.setrlimit(resource.RLIMIT_CPU, (job["cpu_s"], job["cpu_s"]))
    import outlines_core

    try:
        if "schema" in job:
            pattern = outlines_core.json_schema.build_regex_from_schema(job["schema"])
        else:
            pattern = job["pattern"]
        re.compile(pattern)  # what the constraint checks in the server, under these limits first
        chars = sorted(set(map(chr, range(32, 127))) | set("\n\t") | set(pattern))
        vocabulary = outlines_core.Vocabulary(len(chars), {char: [i] for i, char in enumerate(chars)})
        states = len(outlines_core.Index(pattern, vocabulary).get_transitions()) + 1
    except (ValueError, RuntimeError, TypeError, re.error, RecursionError) as error:
        print(json.dumps({"error": " ".join(str(error).split()) or type(error).__name__}))
        return
    print(json.dumps({"pattern": pattern, "states": states}))


if __name__ == "__main__":
    main()
