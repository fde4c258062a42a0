"""The ``--help`` formatter of the bag tools: defaults shown only where they say something."""
import argparse


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Append ``(default: X)`` unless the help already names its default or X is empty."""

    def _get_help_string(self, action):
        text = action.help or ''
        if 'default' in text or not action.option_strings or \
                action.default in (None, '', False, argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)
