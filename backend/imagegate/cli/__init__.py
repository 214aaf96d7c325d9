"""The ``imagegate`` command line.

``main.py`` (the parser and the commands), ``output.py`` (what is printed, exit codes),
``demo.py`` (``imagegate demo``) and ``narrate.py`` (the demo's narration).
"""

from imagegate.cli.main import main

__all__ = ["main"]
