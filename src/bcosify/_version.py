"""The version of bcosify, on its own so that any module can name it without importing the
package (which imports everything)."""

__version__ = "0.1.0"
