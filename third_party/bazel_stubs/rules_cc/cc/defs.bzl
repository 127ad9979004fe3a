"""Offline stand-in for @rules_cc//cc:defs.bzl: forwards to the native rules."""

def cc_binary(**attrs):
    """Forwards to native.cc_binary.

    Args:
      **attrs: attributes of the native rule.
    """

    # buildifier: disable=native-cc-binary
    native.cc_binary(**attrs)

def cc_import(**attrs):
    """Forwards to native.cc_import.

    Args:
      **attrs: attributes of the native rule.
    """

    # buildifier: disable=native-cc-import
    native.cc_import(**attrs)

def cc_library(**attrs):
    """Forwards to native.cc_library.

    Args:
      **attrs: attributes of the native rule.
    """

    # buildifier: disable=native-cc-library
    native.cc_library(**attrs)

def cc_proto_library(**attrs):
    """Forwards to native.cc_proto_library.

    Args:
      **attrs: attributes of the native rule.
    """

    # buildifier: disable=native-cc-proto
    native.cc_proto_library(**attrs)

def cc_test(**attrs):
    """Forwards to native.cc_test.

    Args:
      **attrs: attributes of the native rule.
    """

    # buildifier: disable=native-cc-test
    native.cc_test(**attrs)

def cc_toolchain(**attrs):
    """Forwards to native.cc_toolchain.

    Args:
      **attrs: attributes of the native rule.
    """

    # buildifier: disable=native-cc-toolchain
    native.cc_toolchain(**attrs)

def cc_toolchain_suite(**attrs):
    """Forwards to native.cc_toolchain_suite.

    Args:
      **attrs: attributes of the native rule.
    """

    # buildifier: disable=native-cc-toolchain-suite
    native.cc_toolchain_suite(**attrs)

def fdo_prefetch_hints(**attrs):
    """Forwards to native.fdo_prefetch_hints.

    Args:
      **attrs: attributes of the native rule.
    """

    # buildifier: disable=native-cc-fdo-prefetch-hints
    native.fdo_prefetch_hints(**attrs)

def fdo_profile(**attrs):
    """Forwards to native.fdo_profile.

    Args:
      **attrs: attributes of the native rule.
    """

    # buildifier: disable=native-cc-fdo-profile
    native.fdo_profile(**attrs)

def objc_import(**attrs):
    """Forwards to native.objc_import.

    Args:
      **attrs: attributes of the native rule.
    """

    # buildifier: disable=native-cc-objc-import
    native.objc_import(**attrs)

def objc_library(**attrs):
    """Forwards to native.objc_library.

    Args:
      **attrs: attributes of the native rule.
    """

    # buildifier: disable=native-cc-objc-library
    native.objc_library(**attrs)
