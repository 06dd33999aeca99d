"""
C{python -m wsheart}: the same as the C{wsheart} command.
"""

from wsheart.cli import main

main()
