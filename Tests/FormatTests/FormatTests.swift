// FormatTests
