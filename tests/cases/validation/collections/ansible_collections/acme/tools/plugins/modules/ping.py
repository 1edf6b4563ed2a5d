#!/usr/bin/python
"""acme.tools.ping: answers pong (a module for the validation cases)."""
from __future__ import annotations

DOCUMENTATION = r"""
module: ping
short_description: Answer pong
description: Answers pong; changes nothing.
options: {}
author: gitops-ansible tests
"""

from ansible.module_utils.basic import AnsibleModule


def main():
    module = AnsibleModule(argument_spec={}, supports_check_mode=True)
    module.exit_json(changed=False, ping="pong")


if __name__ == "__main__":
    main()
