"""Offline stand-in for @rules_cc//cc:defs.bzl: forwards to the native rules."""

def cc_binary(**attrs):
    """Forwards to native.cc_binary.

    Args:
      **attrs: attributes of the native rule.
    """
    native.cc_binary(**attrs)  # buildifier: disable=native-cc

def cc_import(**attrs):
    """Forwards to native.cc_import.

    Args:
      **attrs: attributes of the native rule.
    """
    native.cc_import(**attrs)  # buildifier: disable=native-cc

def cc_library(**attrs):
    """Forwards to native.cc_library.

    Args:
      **attrs: attributes of the native rule.
    """
    native.cc_library(**attrs)  # buildifier: disable=native-cc

def cc_proto_library(**attrs):
    """Forwards to native.cc_proto_library.

    Args:
      **attrs: attributes of the native rule.
    """
    native.cc_proto_library(**attrs)  # buildifier: disable=native-cc

def cc_test(**attrs):
    """Forwards to native.cc_test.

    Args:
      **attrs: attributes of the native rule.
    """
    native.cc_test(**attrs)  # buildifier: disable=native-cc

def cc_toolchain(**attrs):
    """Forwards to native.cc_toolchain.

    Args:
      **attrs: attributes of the native rule.
    """
    native.cc_toolchain(**attrs)  # buildifier: disable=native-cc

def cc_toolchain_suite(**attrs):
    """Forwards to native.cc_toolchain_suite.

    Args:
      **attrs: attributes of the native rule.
    """
    native.cc_toolchain_suite(**attrs)  # buildifier: disable=native-cc

def fdo_prefetch_hints(**attrs):
    """Forwards to native.fdo_prefetch_hints.

    Args:
      **attrs: attributes of the native rule.
    """
    native.fdo_prefetch_hints(**attrs)  # buildifier: disable=native-cc

def fdo_profile(**attrs):
    """Forwards to native.fdo_profile.

    Args:
      **attrs: attributes of the native rule.
    """
    native.fdo_profile(**attrs)  # buildifier: disable=native-cc

def objc_import(**attrs):
    """Forwards to native.objc_import.

    Args:
      **attrs: attributes of the native rule.
    """
    native.objc_import(**attrs)  # buildifier: disable=native-cc

def objc_library(**attrs):
    """Forwards to native.objc_library.

    Args:
      **attrs: attributes of the native rule.
    """
    native.objc_library(**attrs)  # buildifier: disable=native-cc
