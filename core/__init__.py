"""Below every other package: small shared mechanisms that import none of the project's packages."""
