// DataTests
