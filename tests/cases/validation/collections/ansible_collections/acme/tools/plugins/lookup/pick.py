"""acme.tools.pick: returns its terms (a lookup for the validation cases)."""
from __future__ import annotations

DOCUMENTATION = r"""
name: pick
short_description: Return the terms given
description: Returns the terms given, unchanged.
options:
  _terms:
    description: The values.
    required: true
author: gitops-ansible tests
"""

from ansible.plugins.lookup import LookupBase


class LookupModule(LookupBase):
    def run(self, terms, variables=None, **kwargs):
        return list(terms)
