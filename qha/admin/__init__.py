"""
Administration over AMP: the admin commands and the C{qha-admin} command line.
"""

__all__: list[str] = []
