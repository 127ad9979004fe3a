"""Offline stand-in for @rules_java//java:defs.bzl: forwards to the native rules."""

version = "4.0.0"

def java_binary(**attrs):
    """Forwards to native.java_binary.

    Args:
      **attrs: attributes of the native rule.
    """

    # buildifier: disable=native-java-binary
    native.java_binary(**attrs)

def java_import(**attrs):
    """Forwards to native.java_import.

    Args:
      **attrs: attributes of the native rule.
    """

    # buildifier: disable=native-java-import
    native.java_import(**attrs)

def java_library(**attrs):
    """Forwards to native.java_library.

    Args:
      **attrs: attributes of the native rule.
    """

    # buildifier: disable=native-java-library
    native.java_library(**attrs)

def java_lite_proto_library(**attrs):
    """Forwards to native.java_lite_proto_library.

    Args:
      **attrs: attributes of the native rule.
    """

    # buildifier: disable=native-java-lite-proto
    native.java_lite_proto_library(**attrs)

def java_package_configuration(**attrs):
    """Forwards to native.java_package_configuration.

    Args:
      **attrs: attributes of the native rule.
    """

    # buildifier: disable=native-java-package-config
    native.java_package_configuration(**attrs)

def java_plugin(**attrs):
    """Forwards to native.java_plugin.

    Args:
      **attrs: attributes of the native rule.
    """

    # buildifier: disable=native-java-plugin
    native.java_plugin(**attrs)

def java_proto_library(**attrs):
    """Forwards to native.java_proto_library.

    Args:
      **attrs: attributes of the native rule.
    """

    # buildifier: disable=native-java-proto
    native.java_proto_library(**attrs)

def java_runtime(**attrs):
    """Forwards to native.java_runtime.

    Args:
      **attrs: attributes of the native rule.
    """

    # buildifier: disable=native-java-runtime
    native.java_runtime(**attrs)

def java_test(**attrs):
    """Forwards to native.java_test.

    Args:
      **attrs: attributes of the native rule.
    """

    # buildifier: disable=native-java-test
    native.java_test(**attrs)

def java_toolchain(**attrs):
    """Forwards to native.java_toolchain.

    Args:
      **attrs: attributes of the native rule.
    """

    # buildifier: disable=native-java-toolchain
    native.java_toolchain(**attrs)
